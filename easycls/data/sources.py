"""Find images and labels in the generic layouts: class folders, split folders, a CSV, a zip.

Everything lands in one `ItemTable`: image references (paths or zip members, see
`images.zip_ref`), their labels, the split when the data brings one, and test images.
"""

from __future__ import annotations

import difflib
import os
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

from .images import IMAGE_EXTENSIONS, is_image_name, zip_ref
from .tables import read_label_csv

__all__ = [
    "ItemTable",
    "DataError",
    "Tree",
    "from_path",
    "from_folder",
    "from_zip",
    "from_csv",
    "from_tree",
    "from_listing",
    "list_folder",
    "resolve_files",
    "resolve_in_tree",
    "closest",
    "SPLIT_NAMES",
]

SPLIT_NAMES = {"train": ("train", "training"), "valid": ("valid", "val", "validation"),
               "test": ("test", "testing")}


class DataError(ValueError):
    """The data could not be used; the message says what was found and what to do."""


@dataclass
class ItemTable:
    """Images and labels ready for training.

    `labels[i]` is a list even for single-label data. `is_valid` is None when the data
    brings no split (a random `valid_pct` split is made later).
    """

    refs: list[str]
    labels: list[list[str]]
    is_valid: list[bool] | None = None
    test_refs: list[str] = field(default_factory=list)
    test_labels: list[list[str]] | None = None  # per test item; [] where unknown
    test_ids: list[str] = field(default_factory=list)  # test names as a submission lists them
    name: str = "data"
    root: str = ""
    class_names: dict[str, str] = field(default_factory=dict)  # label -> human name (optional)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (ref, reason)

    @property
    def classes(self) -> list[str]:
        return sorted({lab for labs in self.labels for lab in labs}, key=_natural_key)

    @property
    def multi_label(self) -> bool:
        return any(len(labs) != 1 for labs in self.labels)

    def drop(self, bad: dict[int, str]) -> ItemTable:
        """Remove items by index, recording each in `skipped` with its reason."""
        if not bad:
            return self
        keep = [i for i in range(len(self.refs)) if i not in bad]
        lost = sorted(set(self.classes) - {lab for i in keep for lab in self.labels[i]})
        if lost:  # a class must not vanish from the model with only a line in skipped.txt
            reasons = Counter(bad.values()).most_common(3)
            raise DataError(f"every image of class(es) {lost[:10]} is unreadable ({len(bad)} "
                            "unreadable in all, e.g. "
                            f"{', '.join(f'{r}: {n}' for r, n in reasons)}; first: "
                            f"{self.refs[min(bad)]}); "
                            "replace the files or remove the class folder")
        self.skipped += [(self.refs[i], reason) for i, reason in sorted(bad.items())]
        self.refs = [self.refs[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        if self.is_valid is not None:
            self.is_valid = [self.is_valid[i] for i in keep]
        return self

    def check(self) -> ItemTable:
        """Fail early, with what was found, on data that cannot train a classifier."""
        if not self.refs:
            raise DataError(f"no images found in {self.root or self.name}")
        classes = self.classes
        if len(classes) < 2:
            raise DataError(f"only one class ({classes[0]!r}) with {len(self.refs)} images in "
                            f"{self.root}: a classifier needs at least two classes")
        if self.is_valid is not None:
            train = {lab for labs, v in zip(self.labels, self.is_valid) if not v for lab in labs}
            only_valid = sorted({lab for labs in self.labels for lab in labs} - train)
            if only_valid:
                raise DataError(f"class(es) {only_valid[:10]} appear only in the validation split "
                                f"of {self.root}; every class needs training images")
            if not any(self.is_valid):
                raise DataError(f"the validation split of {self.root} is empty")
        return self


def _natural_key(s: str) -> tuple:
    # "2" < "10" for numeric labels, plain order otherwise
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


# --- listings: a folder or a zip seen as relative POSIX paths ---------------------------

def _hidden(rel: str) -> bool:
    # Hidden folders (.git, .ipynb_checkpoints) and macOS resource forks are never data.
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


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


class Tree:
    """A folder, or a folder inside a zip, seen as relative POSIX paths.

    Recipes read the same layout from an extracted folder and from the Kaggle zip
    through this one interface.

    Example:
        >>> t = Tree("asl-alphabet.zip", "asl_alphabet_train/asl_alphabet_train")  # doctest: +SKIP
        >>> t.images()[:1], t.ref("A/A1.jpg")                                       # doctest: +SKIP
    """

    def __init__(self, base: str | Path, prefix: str = ""):
        self.base = Path(base).resolve()
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
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
        if self.is_zip:
            return zip_ref(self.base, inner) if inner else str(self.base)
        return str(self.base / inner) if inner else str(self.base)

    def sub(self, rel: str) -> Tree:
        return Tree(self.base, self.prefix + rel) if rel else self

    def ref(self, rel: str) -> str:
        """The image reference (path or zip ref) of `rel`."""
        return (
            zip_ref(self.base, self.prefix + rel)
            if self.is_zip
            else str(self.base / self.prefix / rel)
        )

    def _members(self) -> list[str]:
        n = len(self.prefix)
        return [m[n:] for m in self._names if m.startswith(self.prefix) and len(m) > n]

    def images(self) -> list[str]:
        """Image files, sorted, relative to this tree."""
        if self.is_zip:
            return sorted(
                m
                for m in self._members()
                if not m.endswith("/") and is_image_name(m) and not _hidden(m)
            )
        root = self.base / self.prefix
        return list_folder(root) if root.is_dir() else []

    def dirs(self) -> set[str]:
        """Every folder below this tree (relative), for spotting empty class folders."""
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
        if not self.is_zip:
            return (self.base / self.prefix / rel).exists()
        return (self.prefix + rel).rstrip("/") in self.paths()

    def read_text(self, rel: str) -> str:
        try:
            if self.is_zip:
                with zipfile.ZipFile(self.base) as zf:
                    data = zf.read(self.prefix + rel)
            else:
                data = (self.base / self.prefix / rel).read_bytes()
        except (KeyError, FileNotFoundError):
            raise DataError(f"{self.where(rel)} is missing; the dataset looks incomplete") from None
        return data.decode("utf-8-sig", errors="replace")

    def extract(self, rel: str, dest: Path) -> Path:
        """`rel` as a real file (copied out of a zip into `dest`), for readers that need a path."""
        if not self.is_zip:
            return self.base / self.prefix / rel
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / Path(rel).name
        out.write_text(self.read_text(rel), encoding="utf-8")
        return out

    def summary(self) -> str:
        """What is there, for errors: `12 files (.txt x10, .csv x2)`."""
        files = ([m for m in self._members() if not m.endswith("/")] if self.is_zip else
                 [f for _, _, fs in os.walk(self.base / self.prefix) for f in fs])
        if not files:
            return "nothing (an empty folder)"
        exts = Counter(PurePosixPath(f).suffix.lower() or "(no extension)" for f in files)
        shown = ", ".join(f"{e} x{n}" for e, n in exts.most_common(5))
        return f"{len(files)} file(s) ({shown})"


def _strip_nesting(files: list[str]) -> tuple[str, list[str]]:
    """Descend while every file sits under one single folder (Kaggle's `X/X/...` nesting)."""
    prefix = ""
    while files and all("/" in f for f in files):
        heads = {f.split("/", 1)[0] for f in files}
        if len(heads) != 1:
            break
        head = heads.pop()
        if _split_of(head):  # never descend into a lone train/ folder: it is the split
            break
        if any("/" not in f.split("/", 1)[1] for f in files):  # a lone class folder, not nesting
            break
        prefix += head + "/"
        files = [f.split("/", 1)[1] for f in files]
    return prefix, files


def _split_of(name: str) -> str | None:
    low = name.lower()
    return next((k for k, names in SPLIT_NAMES.items() if low in names), None)


def _class_items(files: list[str], where: str) -> tuple[list[str], list[str]]:
    """(files, labels) from `<class>/.../<file>`; top-level files are refused."""
    loose = [f for f in files if "/" not in f]
    if loose:
        raise DataError(f"{len(loose)} image(s) directly in {where} (e.g. {loose[0]!r}); expected "
                        "one sub-folder per class, or pass a CSV of labels")
    return files, [f.split("/", 1)[0] for f in files]


def _warn_empty(all_dirs: set[str] | None, class_root: str, labels: list[str], where: str) -> None:
    """Warn about class folders (direct children of `class_root`) that hold no image."""
    if all_dirs is None:
        return
    n = len(class_root)
    dirs = {d[n:] for d in all_dirs if d.startswith(class_root) and d[n:] and "/" not in d[n:]}
    empty = sorted(dirs - set(labels) - {s for names in SPLIT_NAMES.values() for s in names})
    if empty:
        warnings.warn(f"{len(empty)} class folder(s) without images in {where}, ignored: "
                      f"{empty[:10]}",
                      stacklevel=4)


def from_listing(
    files: list[str], to_ref, where: str, all_dirs: set[str] | None = None
) -> ItemTable:
    """Detect class folders or split folders in a listing of relative image paths.

    Split folders (`train/`, `valid|val|validation/`, `test/`, any case) win over class
    folders; a `train/` without a validation folder gets a random split later.
    """
    prefix, files = _strip_nesting(files)
    splits: dict[str, list] = {}
    for f in files:
        head, _, rest = f.partition("/")
        kind = _split_of(head) if rest else None
        splits.setdefault(kind or "", []).append(f if not kind else (head, rest))
    if "train" in splits:
        return _split_table(splits, lambda p: to_ref(prefix + p), where, all_dirs, prefix)
    if "valid" in splits:
        raise DataError(f"{where} has a validation folder but no train/ folder; name the training "
                        "folder train/ (or training/)")
    f_all, labels = _class_items(files, where)
    _warn_empty(all_dirs, prefix, labels, where)
    return ItemTable([to_ref(prefix + f) for f in f_all], [[lab] for lab in labels], root=where)


def _split_part(pairs: list[tuple[str, str]], kind: str, where: str) -> tuple[str, str, list[str]]:
    """(folder, inner nesting, files) of one split; two folders for one split are ambiguous."""
    heads = sorted({h for h, _ in pairs})
    if len(heads) > 1:  # "val" and "validation" both present
        raise DataError(f"several {kind} folders in {where}: {heads}; keep one")
    inner_prefix, inner = _strip_nesting([r for _, r in pairs])
    return heads[0], inner_prefix, inner


def _split_table(splits: dict, to_ref, where: str, all_dirs: set[str] | None = None,
                 prefix: str = "") -> ItemTable:
    refs, labels, is_valid = [], [], []
    kinds = [k for k in ("train", "valid") if k in splits]
    for kind in kinds:
        head, inner_prefix, inner = _split_part(splits[kind], kind, where)
        fs, labs = _class_items(inner, f"{where}/{head}")
        _warn_empty(all_dirs, f"{prefix}{head}/{inner_prefix}", labs, f"{where}/{head}")
        refs += [to_ref(f"{head}/{inner_prefix}{f}") for f in fs]
        labels += [[lab] for lab in labs]
        is_valid += [kind == "valid"] * len(fs)
    table = ItemTable(refs, labels, is_valid if "valid" in splits else None, root=where)
    if "test" in splits:
        head, inner_prefix, inner = _split_part(splits["test"], "test", where)
        table.test_refs = [to_ref(f"{head}/{inner_prefix}{f}") for f in inner]
        heads = [f.split("/", 1)[0] if "/" in f else None for f in inner]
        known = set(table.classes)  # once: rebuilding it per test item was quadratic
        if all(h in known for h in heads):  # test/<class>/...: labelled, can be scored
            table.test_labels = [[h] for h in heads]
    return table


def from_tree(tree: Tree) -> ItemTable:
    """Class folders or split folders inside a `Tree` (a folder or a zip)."""
    files = tree.images()
    if not files:
        raise DataError(f"no images in {tree.where()}: found {tree.summary()}. Expected class "
                        "folders (<class>/*.jpg) or split folders (train/<class>/, "
                        f"valid/<class>/); image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}")
    table = from_listing(files, tree.ref, tree.where(), tree.dirs())
    table.name = (
        (tree.base.stem if tree.is_zip else tree.base.name)
        if not tree.prefix
        else tree.prefix.strip("/").split("/")[-1]
    )
    return table


def from_folder(root: str | Path) -> ItemTable:
    """Class folders (`<class>/*.jpg`) or split folders (`train/<class>/`, `valid/<class>/`,
    `test/`).

    Example:
        >>> table = from_folder("photos/")   # doctest: +SKIP
        >>> table.classes                     # doctest: +SKIP
        ['cat', 'dog']
    """
    return from_tree(Tree(root))


def from_zip(path: str | Path) -> ItemTable:
    """The same layouts as `from_folder`, read straight from a .zip archive (no extraction)."""
    return from_tree(Tree(path))


def from_csv(csv: str | Path, images: str | Path | None = None, label_delimiter: str = " ",
             file_column: str | None = None, label_column: str | None = None) -> ItemTable:
    """A CSV of `filename,label(s)` with the images in `images` (default: beside the CSV)."""
    csv = Path(csv).resolve()
    root = Path(images).resolve() if images else _guess_image_dir(csv)
    table = read_label_csv(csv, file_column, label_column, label_delimiter)
    refs = resolve_files(table.files, table.rows, root, csv)
    items = ItemTable(refs, table.labels, root=str(root))
    items.name = csv.parent.name if csv.stem in ("train", "labels", "train_labels") else csv.stem
    return items


def _guess_image_dir(csv: Path) -> Path:
    for name in ("images", "data", "train", "imgs"):
        if (csv.parent / name).is_dir():
            return csv.parent / name
    return csv.parent


def resolve_files(files: list[str], rows: list[int], root: Path, csv: Path) -> list[str]:
    """Map CSV file ids to paths under `root`: extension optional, no escaping the root."""
    return resolve_in_tree(files, rows, Tree(root), csv.name, "pass the image folder with --images")


def resolve_in_tree(files: list[str], rows: list[int], tree: Tree, listed_in: str,
                    fix: str = "check that the archive or folder is complete") -> list[str]:
    """References for file names listed in `listed_in` (a CSV, an annotation file) inside `tree`.

    Names may omit the extension (`123` finds `123.jpg`). Names that leave the tree
    (`../x.jpg`, `/etc/x.jpg`) and names with no image are errors listing the first
    ones and the count, so a partial download never trains silently on a subset.
    """
    escaping = [(r, f) for f, r in zip(files, rows) if _escapes(f)]
    if escaping:
        shown = ", ".join(f"line {r}: {f!r}" for r, f in escaping[:5])
        raise DataError(
            f"{len(escaping)} path(s) in {listed_in} leave the image folder "
            f"{tree.where()} ({shown}); file names must be relative to the image folder"
        )
    present = set(tree.images())
    by_stem: dict[str, str] = {}
    for rel in sorted(present):
        by_stem.setdefault(rel.rsplit(".", 1)[0], rel)
    refs, missing = [], []
    for f, r in zip(files, rows):
        rel = f if f in present else by_stem.get(f)
        if rel is None and not tree.is_zip and (tree.base / tree.prefix / f).is_file():
            rel = f  # an existing file without an image extension: let decoding judge it
        if rel is None:
            missing.append((r, f))
        else:
            refs.append(tree.ref(rel))
    if missing:
        shown = ", ".join(f"line {r}: {f!r}" for r, f in missing[:5])
        raise DataError(
            f"{len(missing)} of {len(files)} images listed in {listed_in} are missing "
            f"from {tree.where()} ({shown}{', ...' if len(missing) > 5 else ''}); {fix}"
        )
    return refs


def _escapes(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")  # C:\...


def from_path(
    source: str | Path, images: str | Path | None = None, label_delimiter: str = " "
) -> ItemTable:
    """Dispatch on what `source` is: a CSV, a zip or a folder (generic layouts only;
    `prepare.read_path` first checks for a known download's layout)."""
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source!r} is neither an existing file or folder nor a dataset name")
    suffix = p.suffix.lower()
    if p.is_dir() or suffix == ".zip":
        return from_folder(p) if p.is_dir() else from_zip(p)
    if suffix in (".csv", ".tsv", ".txt"):
        return from_csv(p, images, label_delimiter)
    raise DataError(f"{source}: don't know how to read a {suffix or 'suffix-less'} file; "
                    "give a folder, a .zip or a .csv of labels")


def closest(name: str, options: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, options, n=n, cutoff=0.4)

