"""What every source produces: an `ItemTable` of image references and labels, and the
`DataError` raised when the data cannot be used."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import UserError

__all__ = ["ItemTable", "DataError"]


class DataError(UserError, ValueError):
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
    columns: dict[str, list[str]] = field(default_factory=dict)  # other CSV columns, per image

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
        self.columns = {k: [v[i] for i in keep] for k, v in self.columns.items()}
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
    # "2" < "10" for numeric labels, plain order otherwise; isdecimal, not isdigit: "²" is a
    # digit that int() refuses
    return (0, int(s), "") if s.isdecimal() else (1, 0, s)
