"""Two machines, played by two `torchrun --nnodes 2` launches on localhost.

Each "node" has its own working folder and its own pixel cache (its local disk); neither
sees the other's files. Rank 0's node holds the run directory; the other never needs one,
not even to resume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_class_folders

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_nodes(nodes: list[Path], port: int, *fit_args: str) -> list[subprocess.Popen]:
    procs = []
    for rank, node in enumerate(nodes):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "EASYCLS_CACHE": str(node / "cache")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "easycls", "fit", *fit_args]
        procs.append(subprocess.Popen(cmd, cwd=node, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    outs = []
    for p in procs:
        try:
            out = p.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            out = p.communicate()[0]
        outs.append((p.returncode, out))
    return outs


def test_two_nodes_train_stop_and_resume_within_a_budget(tmp_path):
    data = tmp_path / "shared" / "split"  # the data: readable by both (a bucket, a shared mount)
    write_class_folders(data / "train", per_class=32, seed=1)
    write_class_folders(data / "valid", per_class=7, seed=2)
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for n in nodes:
        n.mkdir()
    run = nodes[0] / "runs" / "r"
    common = ["--arch", "mobilenetv3_small_050", "--no-pretrained", "--size", "32", "--bs", "8",
              "--lr", "2e-3", "--workers", "0", "--quiet"]
    # The budget plans the epochs; a SIGTERM stops the run partway, and the resumed run
    # ends inside what is left of the budget (the time before the stop counts).
    procs = _launch_nodes(nodes, _free_port(), str(data), "--time-budget", "45s",
                          "--out", "runs/r", *common)
    t0 = time.time()
    while not (run / "checkpoint.pth").exists():
        assert all(p.poll() is None for p in procs) and time.time() - t0 < 240, _finish(procs)
        time.sleep(0.05)
    for p in procs:  # a scheduler's preemption signals every node
        p.send_signal(signal.SIGTERM)
    stopped = _finish(procs)
    said = "".join(out for _, out in stopped)
    assert said.count("easycls fit --resume runs/r") == 1, said  # rank 0 says it, once
    assert (run / "checkpoint.pth").is_file() and not (nodes[1] / "runs").exists()

    done = _finish(_launch_nodes(nodes, _free_port(), "--resume", "runs/r", "--quiet"))
    assert [rc for rc, _ in done] == [0, 0], done
    assert not (nodes[1] / "runs").exists()  # node 1 resumed from what rank 0 sent it
    rows = (run / "history.csv").read_text().splitlines()[1:]
    epochs = [int(r.split(",")[0]) for r in rows]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 2  # once each, one writer
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["time_budget_seconds"] == 45 and metrics["planned_epochs"] >= 2
    assert metrics["n_valid"] == 21  # the whole validation set, gathered from both ranks
    assert not (run / "checkpoint.pth").exists()
    for n in nodes:  # each node built its own cache, on its own disk
        assert any((n / "cache").iterdir())
