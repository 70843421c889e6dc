"""Find images and labels in the generic layouts: class folders, split folders, a CSV, a zip.

Everything lands in one `ItemTable`: image references (paths or zip members, see
`images.zip_ref`), their labels, the split when the data brings one, and test images.
"""

from __future__ import annotations

import difflib
import tempfile
import warnings
from pathlib import Path, PurePosixPath

from . import remote
from .images import IMAGE_EXTENSIONS, zip_ref
from .items import DataError, ItemTable
from .tables import read_label_csv
from .tree import Tree, list_folder

# DataError, ItemTable and Tree live in items.py and tree.py; they stay importable from here.
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
    table.skipped += [(zip_ref(tree.base, m), "outside the archive (an absolute or ../ path): "
                       "not used") for m in tree.outside()]
    table.name = (
        (tree.base.stem if tree.is_zip else PurePosixPath(str(tree.base)).name)
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
    """A CSV of `filename,label(s)` with the images in `images` (default: beside the CSV);
    either may be in object storage."""
    if remote.is_remote(csv):
        return _remote_csv(str(csv), images, label_delimiter, file_column, label_column)
    csv = Path(csv).resolve()
    root = Path(images).resolve() if images else _guess_image_dir(csv)
    table = read_label_csv(csv, file_column, label_column, label_delimiter)
    refs = resolve_files(table.files, table.rows, root, csv)
    items = ItemTable(refs, table.labels, root=str(root), columns=table.extra)
    items.name = csv.parent.name if csv.stem in ("train", "labels", "train_labels") else csv.stem
    return items


def _remote_csv(csv: str, images: str | Path | None, label_delimiter: str,
                file_column: str | None, label_column: str | None) -> ItemTable:
    """`from_csv` for a CSV in object storage: the CSV is read into a temporary file."""
    folder, _, name = csv.rpartition("/")
    here = Tree(folder)
    if images is None:
        guess = next((d for d in ("images", "data", "train", "imgs") if d in here.dirs()), "")
        images = here.sub(guess).where()
    with tempfile.TemporaryDirectory() as tmp:
        table = read_label_csv(here.extract(name, Path(tmp)), file_column, label_column,
                               label_delimiter)
    tree = Tree(str(images))
    refs = resolve_in_tree(table.files, table.rows, tree, name,
                           "pass the image folder with --images")
    items = ItemTable(refs, table.labels, root=tree.where(), columns=table.extra)
    stem = PurePosixPath(name).stem
    items.name = PurePosixPath(folder).name if stem in ("train", "labels", "train_labels") else stem
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
    `prepare.read_path` first checks for a known download's layout); `source` may be a URL
    of object storage (`s3://bucket/prefix`: a folder or a CSV)."""
    if remote.is_remote(source):
        return _from_remote(str(source), images, label_delimiter)
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


def _from_remote(url: str, images: str | Path | None, label_delimiter: str) -> ItemTable:
    suffix = PurePosixPath(url).suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return from_csv(url, images, label_delimiter)
    if suffix == ".zip":
        raise DataError(f"{url}: a zip in object storage is not read in place; upload its "
                        "extracted folder (`aws s3 sync FOLDER s3://...`) and give that prefix")
    return from_folder(url)


def closest(name: str, options: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, options, n=n, cutoff=0.4)

