"""Run `easycls.fit` under a launcher and record, per rank, what the tests check.

Usage (from tests/test_distributed.py):
    torchrun --nproc_per_node 2 tests/ddp_probe.py DATA OUT RECORDS

Each rank writes RECORDS/rank<r>.json: the training indices it was given per pass, a hash
of its final weights, the world size, and the final metrics it computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import easycls
from easycls import distributed

seen: list[list[int]] = []
_get_idxs = distributed.TrainShardsDL.get_idxs


def _recording_get_idxs(self):  # test-only wrapper: record what this rank trains on
    idxs = _get_idxs(self)
    seen.append([int(i) for i in idxs])
    return idxs


distributed.TrainShardsDL.get_idxs = _recording_get_idxs


def main(data: str, out: str, records: str) -> None:
    learn = easycls.fit(data, out=out, arch="mobilenetv3_small_050", pretrained=False, epochs=2,
                        size=32, bs=8, lr=2e-3, quiet=True, augment=False, cache=False, workers=0)
    h = hashlib.sha256()
    for k, v in sorted(learn.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ.get("RANK", 0))
    Path(records).mkdir(parents=True, exist_ok=True)
    Path(records, f"rank{rank}.json").write_text(json.dumps(dict(
        rank=rank, world=int(os.environ.get("WORLD_SIZE", 1)), seen=seen, weights=h.hexdigest(),
        metrics=learn.easycls.metrics, valid_refs=list(learn.dls.valid.dataset.pixels.refs),
        valid_targets=[int(t) for t in learn.dls.valid.dataset.targets])))


if __name__ == "__main__":
    main(*sys.argv[1:4])
