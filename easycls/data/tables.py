"""Read image-label CSV/TSV files that break pandas, without dropping a row.

Kaggle label files often end in a free-text column with unquoted commas and
quotes (the course file ``ImageID,Labels,Caption``); ``pandas.read_csv`` raises
``ParserError`` on them. This reader parses line by line: a well-formed line goes
through the ``csv`` module, any other line is split on the first separators only,
so the last column keeps the rest (the needed columns must come before any
free text with unquoted separators, as in the usual Kaggle shape). Every problem is collected and
reported
once, with line numbers and what to do.

Example:
    >>> table = read_label_csv("train.csv")          # doctest: +SKIP
    >>> table.files[0], table.labels[0]               # doctest: +SKIP
    ('0.jpg', ['1', '19'])
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .images import IMAGE_EXTENSIONS

__all__ = [
    "FILE_COLUMNS",
    "LABEL_COLUMNS",
    "LabelTable",
    "TableError",
    "read_id_csv",
    "read_label_csv",
]

FILE_COLUMNS = (
    "id",
    "image",
    "imageid",
    "image_id",
    "filename",
    "file",
    "fname",
    "path",
    "name",
    "img",
)
LABEL_COLUMNS = ("labels", "label", "tags", "class", "category", "target", "y")

# Never guessed as the label column: reading captions as labels would "work" silently.
_TEXT_COLUMNS = (
    "caption",
    "captions",
    "text",
    "description",
    "comment",
    "comments",
    "title",
    "notes",
)
# str.splitlines() would also split on \u2028, \x1c, ... which do occur in scraped captions.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MAX_LISTED = 10

PathLike = str | os.PathLike


class TableError(UserError, ValueError):
    """A label file that cannot be read as given; the message says where and what to do.

    Attributes:
        lines: 1-based line numbers of the offending rows (all of them, not only those listed).
    """

    def __init__(self, message: str, lines: list[int] | None = None) -> None:
        super().__init__(message)
        self.lines = sorted(set(lines or []))


@dataclass
class LabelTable:
    """Rows of a label file, in file order.

    Attributes:
        files: The id/filename column, as written (no path resolution).
        labels: Labels per row, always a list (strings, never cast to numbers).
        rows: 1-based line number of each row in the file, for error messages.
        file_column: Header name of the id/filename column.
        label_column: Header name of the label column.
        extra: Every other column by header name (e.g. ``Caption``), one value per row.
    """

    files: list[str]
    labels: list[list[str]]
    rows: list[int]
    file_column: str
    label_column: str
    extra: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)


# One reported problem: its message and the line numbers involved.
_Problem = tuple[str, list[int]]


@dataclass
class _Sheet:
    """A decoded file: header fields, separator and the non-blank data lines."""

    path: Path
    sep: str
    header: list[str]
    lines: list[tuple[int, str]]


def read_label_csv(
    path: PathLike,
    file_column: str | None = None,
    label_column: str | None = None,
    label_delimiter: str | None = " ",
    require_labels: bool = True,
    sep: str | None = None,
) -> LabelTable:
    """Read an image-label table from a CSV or TSV file.

    Args:
        path: The file; ``.tsv``/``.tab`` or a tab-separated header means tabs.
        file_column: Header of the id/filename column; guessed from ``FILE_COLUMNS`` if None.
        label_column: Header of the label column; guessed from ``LABEL_COLUMNS`` if None.
        label_delimiter: Separates labels within a cell (``" "``, ``"|"``, ``";"``);
            None keeps the whole cell as one label (class names with spaces).
        require_labels: If True, a row with no label is an error; else its labels are ``[]``.
        sep: Column separator; detected from the extension and header if None.

    Returns:
        The rows in file order.

    Raises:
        TableError: Unknown columns, malformed rows, empty labels or duplicate ids;
            all row problems are reported together.

    Example:
        >>> read_label_csv("train.csv", label_delimiter=" ").labels[:2]  # doctest: +SKIP
        [['1'], ['1', '19']]
    """
    sheet = _load(Path(path), sep)
    file_idx = _file_index(sheet, file_column)
    label_idx = _label_index(sheet, label_column, file_idx)
    rows, problems = _parse_rows(sheet, file_idx, need=max(file_idx, label_idx))
    labels = [_split_labels(fields[label_idx], label_delimiter) for _, fields in rows]
    _warn_split_on_spaces(path, [fields[label_idx] for _, fields in rows], labels,
                          label_delimiter)
    if require_labels:
        problems += _empty_label_problems(sheet, rows, labels, file_idx, label_idx)
    problems += _duplicate_problems(sheet, rows, file_idx)
    _raise_if(problems)
    extra_idx = [i for i in range(len(sheet.header)) if i not in (file_idx, label_idx)]
    return LabelTable(
        files=[fields[file_idx] for _, fields in rows],
        labels=labels,
        rows=[line for line, _ in rows],
        file_column=sheet.header[file_idx],
        label_column=sheet.header[label_idx],
        extra={_column_key(sheet.header, i): [f[i] for _, f in rows] for i in extra_idx},
    )


def read_id_csv(
    path: PathLike, file_column: str | None = None, sep: str | None = None
) -> tuple[list[str], list[int]]:
    """Read the image ids of an unlabeled file (e.g. a Kaggle ``test.csv``), in file order.

    Args:
        path: The file (``ImageID,Caption`` and the like; free text may hold commas).
        file_column: Header of the id column; guessed from ``FILE_COLUMNS`` if None.
        sep: Column separator; detected if None.

    Returns:
        The ids and the 1-based line number of each.

    Raises:
        TableError: Unknown column, malformed rows or duplicate ids.

    Example:
        >>> ids, lines = read_id_csv("test.csv")  # doctest: +SKIP
    """
    sheet = _load(Path(path), sep)
    file_idx = _file_index(sheet, file_column)
    rows, problems = _parse_rows(sheet, file_idx, need=file_idx)
    problems += _duplicate_problems(sheet, rows, file_idx)
    _raise_if(problems)
    return [fields[file_idx] for _, fields in rows], [line for line, _ in rows]


# --- reading and splitting -------------------------------------------------------------


def _load(path: Path, sep: str | None) -> _Sheet:
    """Decode the file (UTF-8, BOM or not) and split it into a header and data lines."""
    lines = [(n, line) for n, line in enumerate(_decode_text(path), start=1) if line.strip()]
    if not lines:
        raise TableError(f"{path} is empty; expected a header line such as ImageID,Labels.")
    (_, head), data = lines[0], lines[1:]
    sep = sep or _detect_sep(path, head)
    header = [h.strip() for h in _csv_fields(head, sep) or head.split(sep)]
    if not data:
        raise TableError(f"{path} has a header ({sep.join(header)}) but no data rows.")
    return _Sheet(path, sep, header, data)


def _decode_text(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        # Excel writes a BOM; plain utf-8 would glue it to the first header name.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TableError(
            f"{path} is not UTF-8 (bad byte at line {line}); re-save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)."
        ) from err
    return _LINE_BREAK.split(text)


def _detect_sep(path: Path, header_line: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    counts = {s: header_line.count(s) for s in (",", "\t", ";")}
    best = max(counts, key=counts.get)  # ties keep ",", the first key
    return best if counts[best] else ","


def _csv_fields(line: str, sep: str) -> list[str] | None:
    """Fields of a well-formed CSV line, or None when its quoting is off."""
    try:
        return next(csv.reader([line], delimiter=sep, strict=True))
    except csv.Error:
        return None


def _split_row(line: str, sep: str, width: int) -> tuple[list[str], bool]:
    """Split a data line into at most ``width`` fields.

    Returns:
        The fields and whether separators were left over in the last field
        (a free-text column that is not the last one, or a broken row).
    """
    fields = _csv_fields(line, sep)
    if fields is not None and len(fields) <= width:
        return fields, False
    # Too many fields or a stray quote: the trailing column takes everything after the first
    # width-1 separators, so commas and quotes in a caption stay in the caption.
    return _limited_split(line, sep, width - 1)


def _limited_split(line: str, sep: str, maxsplit: int) -> tuple[list[str], bool]:
    fields: list[str] = []
    pos: int | None = 0
    while len(fields) < maxsplit and pos is not None:
        value, pos = _next_field(line, sep, pos)
        fields.append(value)
    if pos is None:
        return fields, False
    rest = line[pos:]
    single = _csv_fields(rest, sep)
    if single is not None and len(single) == 1:
        return fields + single, False  # a properly quoted last field
    return fields + [rest], sep in rest


def _next_field(line: str, sep: str, pos: int) -> tuple[str, int | None]:
    """One field starting at ``pos`` (quote-aware) and where the next one starts (None: end)."""
    if line.startswith('"', pos):
        end = _closing_quote(line, pos + 1)
        after = end + 1 if end is not None else None
        if after is not None and (after == len(line) or line.startswith(sep, after)):
            nxt = after + len(sep) if after < len(line) else None
            return line[pos + 1 : end].replace('""', '"'), nxt
    # Unquoted, or a quote that does not enclose the field: take it literally.
    cut = line.find(sep, pos)
    if cut < 0:
        return line[pos:], None
    return line[pos:cut], cut + len(sep)


def _closing_quote(line: str, start: int) -> int | None:
    i = start
    while (i := line.find('"', i)) >= 0:
        if line.startswith('""', i):
            i += 2  # an escaped quote inside the field
            continue
        return i
    return None


def _warn_split_on_spaces(path: PathLike, cells: list[str], labels: list[list[str]],
                          delimiter: str | None) -> None:
    """Say loudly when spaces made several labels of one cell: "golden retriever" would
    otherwise silently become a multi-label model over the words."""
    if delimiter is None or not delimiter.isspace():
        return
    # Lists of codes ("0 2 5 8", COMP5329's format) are plainly several labels; only words
    # can be one name that the spaces cut apart.
    split = [(cell, labs) for cell, labs in zip(cells, labels)
             if len(labs) > 1 and any(ch.isalpha() for lab in labs for ch in lab)]
    if split:
        cell, labs = split[0]
        warnings.warn(f"{path}: {len(split)} label cell(s) hold spaces and are read as several "
                      f"labels each ({cell.strip()!r} -> {labs}), making a multi-label model. "
                      "If a label is one name with spaces, keep it whole with "
                      "--label-delimiter '|' (any character the labels do not contain)",
                      stacklevel=3)


def _split_labels(cell: str, delimiter: str | None) -> list[str]:
    """Split a label cell; keeps label text as written, drops empties and repeats."""
    if delimiter is None:
        pieces = [cell]
    elif delimiter.isspace():
        pieces = cell.split()  # any run of whitespace: "1  19" and tabs are fine
    else:
        pieces = cell.split(delimiter)
    return list(dict.fromkeys(p.strip() for p in pieces if p.strip()))


# --- columns -----------------------------------------------------------------------------


def _file_index(sheet: _Sheet, given: str | None) -> int:
    if given is not None:
        return _given_index(sheet, given, "file_column")
    idx = _match(sheet.header, FILE_COLUMNS)
    if idx is None and sheet.header[0].lower().endswith(tuple(IMAGE_EXTENSIONS)):
        raise TableError(
            f"{sheet.path}: the first line ({sheet.sep.join(sheet.header)}) looks like data, not a "
            "header; add a header line such as ImageID,Labels so the first row is not lost."
        )
    return 0 if idx is None else idx


def _label_index(sheet: _Sheet, given: str | None, file_idx: int) -> int:
    if given is not None:
        idx = _given_index(sheet, given, "label_column")
        if idx == file_idx:
            raise TableError(f"{sheet.path}: label_column and file_column are both {given!r}.")
        return idx
    idx = _match(sheet.header, LABEL_COLUMNS, skip=file_idx)
    if idx is None:
        idx = next(
            (
                i
                for i, h in enumerate(sheet.header)
                if i != file_idx and h.lower() not in _TEXT_COLUMNS
            ),
            None,
        )
    if idx is None:
        raise TableError(
            f"{sheet.path}: found no label column in the header {sheet.header}; a label file needs "
            "an image column and a label column (e.g. ImageID,Labels). "
            "Pass label_column=... (and file_column=...) naming them."
        )
    return idx


def _given_index(sheet: _Sheet, given: str, param: str) -> int:
    exact = [i for i, h in enumerate(sheet.header) if h == given]
    loose = [i for i, h in enumerate(sheet.header) if h.lower() == given.strip().lower()]
    if exact or loose:
        return (exact or loose)[0]
    raise TableError(
        f"{sheet.path}: no column {given!r} in the header {sheet.header}; "
        f"pass {param}= one of those names."
    )


def _match(header: list[str], names: tuple[str, ...], skip: int = -1) -> int | None:
    return next((i for i, h in enumerate(header) if i != skip and h.lower() in names), None)


def _column_key(header: list[str], i: int) -> str:
    """Header name for ``extra``; unnamed (pandas index) and repeated names get unique keys."""
    name = header[i] or f"column{i}"
    return name if header.index(header[i]) == i else f"{name}.{i}"


# --- row checks -------------------------------------------------------------------------

_Row = tuple[int, list[str]]  # (line number, fields padded to the header width)


def _parse_rows(sheet: _Sheet, file_idx: int, need: int) -> tuple[list[_Row], list[_Problem]]:
    """Parse every data line; bad lines are collected, never dropped silently."""
    width = len(sheet.header)
    rows, malformed, shifted = [], [], []
    for number, line in sheet.lines:
        fields, leftover = _split_row(line, sheet.sep, width)
        fields = [f.strip() for f in fields]
        if leftover and need == width - 1:
            shifted.append(number)
        elif len(fields) <= need or not fields[file_idx]:
            malformed.append(number)
        else:
            rows.append((number, fields + [""] * (width - len(fields))))
    return rows, _shifted_problem(sheet, shifted, need) + _malformed_problem(sheet, malformed, need)


def _shifted_problem(sheet: _Sheet, lines: list[int], need: int) -> list[_Problem]:
    if not lines:
        return []
    text = (
        f"{_count(lines, 'row')} in {sheet.path} with more fields than the header "
        f"({sheet.sep.join(sheet.header)}): {_lines(lines)}. Unquoted separators up to the "
        f"column {sheet.header[need]!r} make the columns ambiguous; quote fields that contain "
        "the separator, or move the free-text column to the end."
    )
    return [(text, lines)]


def _malformed_problem(sheet: _Sheet, lines: list[int], need: int) -> list[_Problem]:
    if not lines:
        return []
    needed = sheet.sep.join(sheet.header[: need + 1])
    text = (
        f"{_count(lines, 'malformed row')} in {sheet.path}: {_lines(lines)}. "
        f"Each row needs {need + 1} field(s) ({needed}) and a non-empty id; fix or delete these "
        "rows."
    )
    return [(text, lines)]


def _empty_label_problems(
    sheet: _Sheet, rows: list[_Row], labels: list[list[str]], file_idx: int, label_idx: int
) -> list[_Problem]:
    empty = [(n, f[file_idx]) for (n, f), found in zip(rows, labels, strict=True) if not found]
    if not empty:
        return []
    column = sheet.header[label_idx]
    listed = [f"  line {n}: empty {column} for image {name}" for n, name in empty[:_MAX_LISTED]]
    if len(empty) > _MAX_LISTED:
        listed.append(f"  ... and {len(empty) - _MAX_LISTED} more")
    text = (
        f"{_count(empty, 'row')} with empty {column} in {sheet.path}:\n" + "\n".join(listed) + "\n"
        "Give every image a label, or remove those rows from the CSV."
    )
    return [(text, [n for n, _ in empty])]


def _duplicate_problems(sheet: _Sheet, rows: list[_Row], file_idx: int) -> list[_Problem]:
    seen: dict[str, list[int]] = defaultdict(list)
    for number, fields in rows:
        seen[fields[file_idx]].append(number)
    dups = [(name, lines) for name, lines in seen.items() if len(lines) > 1]
    if not dups:
        return []
    listed = ", ".join(f"{name} ({_lines(ls)})" for name, ls in dups[:_MAX_LISTED])
    more = f", ... and {len(dups) - _MAX_LISTED} more" if len(dups) > _MAX_LISTED else ""
    text = (
        f"{_count(dups, 'duplicate id')} in {sheet.path}: {listed}{more}. "
        "Each image must appear once; merge its labels into one row."
    )
    return [(text, [n for _, ls in dups for n in ls])]


def _raise_if(problems: list[_Problem]) -> None:
    if problems:
        raise TableError(
            "\n".join(text for text, _ in problems), [n for _, ns in problems for n in ns]
        )


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _lines(numbers: list[int]) -> str:
    word = "line" if len(numbers) == 1 else "lines"
    shown = ", ".join(map(str, numbers[:_MAX_LISTED]))
    return f"{word} {shown}" + (
        f" ... ({len(numbers)} in all)" if len(numbers) > _MAX_LISTED else ""
    )
