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
from pathlib import Path, PurePosixPath

from .images import is_image_name, zip_ref
from .tables import read_label_csv

__all__ = ["ItemTable", "DataError", "from_path", "from_folder", "from_zip", "from_csv",
           "from_listing", "list_folder", "list_zip", "SPLIT_NAMES"]

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
    test_labels: list[list[str]] | None = None
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

def list_folder(root: Path) -> list[str]:
    """Image files under `root` as sorted relative POSIX paths (litter and hidden files skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames if is_image_name((rel / f).as_posix())]
    return sorted(out)


def list_zip(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(n for n in zf.namelist() if not n.endswith("/") and is_image_name(n))


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
        raise DataError(f"{len(loose)} image(s) directly in {where} (e.g. {loose[0]!r}); expected one "
                        "sub-folder per class, or pass a CSV of labels")
    return files, [f.split("/", 1)[0] for f in files]


def _warn_empty(dirs: set[str], used: set[str], where: str) -> None:
    empty = sorted(dirs - used)
    if empty:
        warnings.warn(f"class folder(s) without images in {where}: {empty[:10]}", stacklevel=3)


def from_listing(files: list[str], to_ref, where: str, all_dirs: set[str] | None = None) -> ItemTable:
    """Detect class folders or split folders in a listing of relative image paths."""
    prefix, files = _strip_nesting(files)
    splits: dict[str, list[str]] = {}
    for f in files:
        head, _, rest = f.partition("/")
        kind = _split_of(head) if rest else None
        splits.setdefault(kind or "", []).append(f if not kind else (head, rest))
    if "train" in splits and "valid" in splits:
        return _split_table(splits, lambda p: to_ref(prefix + p), where)
    f_all, labels = _class_items(files, where)
    if all_dirs is not None:
        _warn_empty({d[len(prefix):].split("/")[0] for d in all_dirs if d.startswith(prefix) and d[len(prefix):]},
                    set(labels), where)
    return ItemTable([to_ref(prefix + f) for f in f_all], [[lab] for lab in labels], root=where)


def _split_table(splits: dict, to_ref, where: str) -> ItemTable:
    refs, labels, is_valid = [], [], []
    for kind in ("train", "valid"):
        heads = {h for h, _ in splits[kind]}
        if len(heads) > 1:  # "val" and "validation" both present: ambiguous
            raise DataError(f"several {kind} folders in {where}: {sorted(heads)}; keep one")
        head = heads.pop()
        inner_prefix, inner = _strip_nesting([r for _, r in splits[kind]])
        fs, labs = _class_items(inner, f"{where}/{head}")
        refs += [to_ref(f"{head}/{inner_prefix}{f}") for f in fs]
        labels += [[lab] for lab in labs]
        is_valid += [kind == "valid"] * len(fs)
    table = ItemTable(refs, labels, is_valid, root=where)
    table.test_refs = [to_ref(f"{h}/{r}") for h, r in splits.get("test", [])]
    return table


def from_folder(root: str | Path) -> ItemTable:
    """Class folders (`<class>/*.jpg`) or split folders (`train/<class>/`, `valid/<class>/`, `test/`)."""
    root = Path(root).resolve()
    files = list_folder(root)
    dirs = {Path(d).relative_to(root).as_posix() for d, _, _ in os.walk(root)} - {"."}
    table = from_listing(files, lambda p: str(root / p), str(root), dirs)
    table.name = root.name
    return table


def from_zip(path: str | Path) -> ItemTable:
    """The same layouts as `from_folder`, read straight from a .zip archive."""
    path = Path(path).resolve()
    try:
        files = list_zip(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is not a readable zip archive ({e})") from e
    table = from_listing(files, lambda p: zip_ref(path, p), str(path))
    table.name = path.stem
    return table


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
    escaping = [(r, f) for f, r in zip(files, rows) if PurePosixPath(f).is_absolute() or ".." in PurePosixPath(f).parts]
    if escaping:
        shown = ", ".join(f"line {r}: {f!r}" for r, f in escaping[:5])
        raise DataError(f"{len(escaping)} path(s) in {csv.name} leave the image folder {root} ({shown}); "
                        "file names must be relative to --images")
    by_stem = _stem_index(root)
    refs, missing = [], []
    for f, r in zip(files, rows):
        p = root / f
        if p.is_file():
            refs.append(str(p))
        elif f in by_stem:
            refs.append(str(root / by_stem[f]))
        else:
            missing.append((r, f))
    if missing:
        shown = ", ".join(f"line {r}: {f!r}" for r, f in missing[:5])
        raise DataError(f"{len(missing)} of {len(files)} images listed in {csv.name} are missing from {root} "
                        f"({shown}); pass the image folder with --images")
    return refs


def _stem_index(root: Path) -> dict[str, str]:
    """`123` -> `123.jpg` for CSVs that list ids without extensions (relative to root)."""
    if not root.is_dir():
        return {}
    index: dict[str, str] = {}
    for rel in list_folder(root):
        index.setdefault(rel.rsplit(".", 1)[0], rel)
    return index


def from_path(source: str | Path, images: str | Path | None = None, label_delimiter: str = " ") -> ItemTable:
    """Dispatch on what `source` is: a CSV, a zip or a folder."""
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source!r} is neither an existing file or folder nor a dataset name")
    if p.is_dir():
        return from_folder(p)
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return from_zip(p)
    if suffix in (".csv", ".tsv", ".txt"):
        return from_csv(p, images, label_delimiter)
    raise DataError(f"{source}: don't know how to read a {suffix or 'suffix-less'} file; "
                    "give a folder, a .zip or a .csv of labels")


def closest(name: str, options: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, options, n=n, cutoff=0.4)


def class_counts(table: ItemTable) -> Counter:
    return Counter(lab for labs in table.labels for lab in labs)
