"""A folder or a zip seen as relative POSIX paths: the one listing every layout reads.

Recipes and the generic layouts read the same files from an extracted folder and from the
Kaggle zip through `Tree`; zip listings are cached per archive and modification time. A
prefix in object storage (`s3://bucket/prefix`, see `remote`) is a third kind of tree.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from functools import lru_cache
from pathlib import Path, PurePosixPath

from . import remote
from .images import is_image_name, zip_ref
from .items import DataError

__all__ = ["Tree", "list_folder"]


def _hidden(rel: str) -> bool:
    # Hidden folders (.git, .ipynb_checkpoints) and macOS resource forks are never data.
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def _outside(member: str) -> bool:
    """A zip member whose name leaves the archive's root: absolute (`/x`, `C:/x`, `\\x`) or
    through `..` (zip-slip). Never used as data."""
    name = member.replace("\\", "/")
    return (name.startswith("/") or (len(name) > 1 and name[1] == ":")
            or ".." in name.split("/"))


def list_folder(root: Path) -> list[str]:
    """Image files under `root` as sorted relative POSIX paths (litter and hidden files skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames if is_image_name((rel / f).as_posix())]
    return sorted(out)


@lru_cache(maxsize=8)
def _zip_names(path: str, mtime_ns: int) -> tuple[str, ...]:
    # Cached: recipes probe an archive several times; the mtime key notices a rewrite.
    with zipfile.ZipFile(path) as zf:
        return tuple(zf.namelist())


@lru_cache(maxsize=8)
def _zip_index(path: str, mtime_ns: int) -> tuple[frozenset[str], frozenset[str]]:
    """(every member and folder, every folder) of a zip, without trailing "/": O(1) lookups."""
    folders, files = set(), set()
    for m in _zip_names(path, mtime_ns):
        parts = m.rstrip("/").split("/")
        folders.update(
            "/".join(parts[:i])
            for i in range(1, len(parts) if not m.endswith("/") else len(parts) + 1)
        )
        if not m.endswith("/"):
            files.add(m)
    return frozenset(folders | files), frozenset(folders)


@lru_cache(maxsize=8)
def _folders(names: tuple[str, ...]) -> frozenset[str]:
    """Every folder that holds one of ``names`` (object keys have no folders of their own)."""
    return frozenset("/".join(parts[:i]) for n in names
                     for parts in [n.split("/")] for i in range(1, len(parts)))


class Tree:
    """A folder, or a folder inside a zip, seen as relative POSIX paths.

    Recipes read the same layout from an extracted folder and from the Kaggle zip
    through this one interface.

    Example:
        >>> t = Tree("asl-alphabet.zip", "asl_alphabet_train/asl_alphabet_train")  # doctest: +SKIP
        >>> t.images()[:1], t.ref("A/A1.jpg")                                       # doctest: +SKIP
    """

    def __init__(self, base: str | Path, prefix: str = ""):
        self.remote = remote.is_remote(base)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.remote:  # a URL: its listing stands for the zip's member names
            self.base = str(base).rstrip("/")
            self.is_zip = False
            self._names = tuple(remote.listing(self.base))
            return
        self.base = Path(base).resolve()
        self.is_zip = self.base.is_file()
        if self.is_zip:
            try:
                self._key = (str(self.base), os.stat(self.base).st_mtime_ns)
                self._names = _zip_names(*self._key)
            except zipfile.BadZipFile as e:
                raise DataError(f"{self.base} is not a readable zip archive ({e}); download it "
                                "again") from e

    def __repr__(self) -> str:
        return f"Tree({self.where()!r})"

    def where(self, rel: str = "") -> str:
        """Human-readable location of `rel` (`archive.zip!/inner/rel` inside a zip)."""
        inner = (self.prefix + rel).strip("/")
        if self.remote:
            return f"{self.base}/{inner}" if inner else self.base
        if self.is_zip:
            return zip_ref(self.base, inner) if inner else str(self.base)
        return str(self.base / inner) if inner else str(self.base)

    def sub(self, rel: str) -> Tree:
        return Tree(self.base, self.prefix + rel) if rel else self

    def ref(self, rel: str) -> str:
        """The image reference (path or zip ref) of `rel`."""
        if self.remote:
            return f"{self.base}/{self.prefix}{rel}"
        return (
            zip_ref(self.base, self.prefix + rel)
            if self.is_zip
            else str(self.base / self.prefix / rel)
        )

    def _members(self) -> list[str]:
        n = len(self.prefix)
        return [m[n:] for m in self._names if m.startswith(self.prefix) and len(m) > n]

    def images(self) -> list[str]:
        """Image files, sorted, relative to this tree (zip members outside the archive's root
        left out: see `outside`)."""
        if self.is_zip or self.remote:
            return sorted(
                m
                for m in self._members()
                if not m.endswith("/") and is_image_name(m) and not _hidden(m)
                and not _outside(self.prefix + m)
            )
        root = self.base / self.prefix
        return list_folder(root) if root.is_dir() else []

    def outside(self) -> list[str]:
        """Zip only: image members whose names leave the archive's root (absolute, `..`)."""
        if not self.is_zip:
            return []
        return sorted(m for m in self._names if _outside(m) and is_image_name(m))

    def dirs(self) -> set[str]:
        """Every folder below this tree (relative), for spotting empty class folders."""
        if self.remote:
            n = len(self.prefix)
            return {d[n:] for d in _folders(self._names)
                    if d.startswith(self.prefix) and len(d) > n and not _hidden(d[n:])}
        if not self.is_zip:
            root = self.base / self.prefix
            found = {Path(d).relative_to(root).as_posix() for d, _, _ in os.walk(root)} - {"."}
            return {d for d in found if not _hidden(d)}
        n = len(self.prefix)
        return {d[n:] for d in _zip_index(*self._key)[1] if d.startswith(self.prefix) and len(d) > n
                and not _hidden(d[n:])}

    def paths(self) -> frozenset[str]:
        """Zip only: every member and folder of the whole archive (no trailing "/")."""
        return _zip_index(*self._key)[0]

    def exists(self, rel: str) -> bool:
        rel = rel.strip("/")
        if self.remote:
            inner = (self.prefix + rel).rstrip("/")
            return inner in self._names or inner in _folders(self._names)
        if not self.is_zip:
            return (self.base / self.prefix / rel).exists()
        return (self.prefix + rel).rstrip("/") in self.paths()

    def read_text(self, rel: str) -> str:
        try:
            if self.remote:
                data = remote.read_bytes(self.ref(rel))
            elif self.is_zip:
                with zipfile.ZipFile(self.base) as zf:
                    data = zf.read(self.prefix + rel)
            else:
                data = (self.base / self.prefix / rel).read_bytes()
        except (KeyError, FileNotFoundError, remote.MissingObject):
            raise DataError(f"{self.where(rel)} is missing; the dataset looks incomplete") from None
        return data.decode("utf-8-sig", errors="replace")

    def extract(self, rel: str, dest: Path) -> Path:
        """`rel` as a real file (copied out of a zip or the storage into `dest`), for readers
        that need a path."""
        if not (self.is_zip or self.remote):
            return self.base / self.prefix / rel
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / Path(rel).name
        out.write_text(self.read_text(rel), encoding="utf-8")
        return out

    def summary(self) -> str:
        """What is there, for errors: `12 files (.txt x10, .csv x2)`."""
        files = ([m for m in self._members() if not m.endswith("/")]
                 if self.is_zip or self.remote else
                 [f for _, _, fs in os.walk(self.base / self.prefix) for f in fs])
        if not files:
            return "nothing (an empty folder)"
        exts = Counter(PurePosixPath(f).suffix.lower() or "(no extension)" for f in files)
        shown = ", ".join(f"{e} x{n}" for e, n in exts.most_common(5))
        return f"{len(files)} file(s) ({shown})"
