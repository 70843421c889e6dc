"""`easycls check`: duplicates, leakage, odd images, imbalance and likely label errors.

`hashing` decodes each image once, small, and hashes it; `index` finds close hashes
without comparing every pair; `findings` turns them into groups and findings; `report`
writes `check.json`, `check.md` and the worst-cases grid; `run.check` ties them together.
"""

from .run import check

__all__ = ["check"]
