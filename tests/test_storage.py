"""Choosing and building the pixel storage once for all processes (2 gloo ranks on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easycls.data import storage
from easycls.distributed import Session

PROBE = Path(__file__).with_name("storage_probe.py")


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True)
    for i in range(n):
        a = np.random.default_rng(i).integers(0, 256, (30, 26, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    (folder / "99.png").write_bytes(b"broken")
    return sorted(str(p) for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["cache", "jpeg", "none"])
def test_one_process(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("EASYCLS_CACHE", str(tmp_path / "cache"))
    refs = _images(tmp_path / "img", 6)
    pixels, failures, _, _ = storage.open_pixels(refs, 16, kind, Session())
    assert failures == {6: "not an image"}
    if kind == "none":
        assert pixels is None
    else:
        assert pixels[[0, 5]].shape == (2, 16, 16, 3) and not pixels[6].any()
    assert storage.choose("auto", [(6, 16)], Session()) == "cache"


def _torchrun(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_agree_and_build_once_together(tmp_path):
    refs = _images(tmp_path / "img", 9)
    records = tmp_path / "records"
    records.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EASYCLS_CACHE": str(tmp_path / "cache")}
    res = _torchrun(str(PROBE), str(tmp_path / "img"), str(records), cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == 2 and r0["local"] == [0, 2] and r1["local"] == [1, 2]
    assert r0["auto"] == r1["auto"] == "cache"  # rank 1 alone would have said otherwise
    for kind in ("cache", "jpeg", "none"):
        assert r0[kind] == r1[kind], kind  # same pixels, same failures on both
        assert r0[kind]["failures"] == {str(len(refs) - 1): "not an image"}
    # one store, written in two parts (one per process), nothing else left behind
    assert r0["store_files"] == ["index.npy", "shard-000.bin", "shard-001.bin"]
    kinds = sorted(p.suffix for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock")
    assert kinds == [".json", ".json", ".npy", ".store"]
