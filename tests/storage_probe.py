"""Run `storage.choose` / `open_pixels` under a launcher; each rank records what it got.

Usage (from tests/test_storage.py):
    torchrun --nproc_per_node 2 tests/storage_probe.py IMAGES_DIR RECORDS_DIR

Rank 1 sees a zero cache budget, so on its own it would choose differently from rank 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from easycls import distributed
from easycls.data import storage


def main(images: str, records: str) -> None:
    sess = distributed.session(cpu=True, timeout=120)
    if sess.rank == 1:
        os.environ["EASYCLS_CACHE_BUDGET_GB"] = "0"
    refs = sorted(str(p) for p in Path(images).iterdir())
    out = dict(rank=sess.rank, world=sess.world_size, local=[sess.local_rank,
                                                             sess.local_world_size])
    out["auto"] = storage.choose("auto", [(len(refs), 24)], sess)
    for kind in ("cache", "jpeg", "none"):
        pixels, failures, built, _ = storage.open_pixels(refs, 24, kind, sess)
        digest = None
        if pixels is not None:
            digest = hashlib.sha256(pixels[list(range(len(refs)))].tobytes()).hexdigest()
        out[kind] = dict(failures={str(k): v for k, v in failures.items()}, digest=digest,
                         built=built)
    shards = sorted(p.name for p in Path(os.environ["EASYCLS_CACHE"]).glob("*.store/*"))
    out["store_files"] = shards
    Path(records, f"rank{sess.rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
