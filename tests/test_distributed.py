"""Multi-process training: shard arithmetic, and 2 gloo processes on CPU under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_class_folders
from fastai.data.core import TfmdDL

import easycls
from easycls.distributed import Session, TrainShardsDL, ValidShardsDL, resolve_precision
from easycls.metrics import single_label_metrics

PROBE = Path(__file__).with_name("ddp_probe.py")


def _loader(n: int, bs: int, shuffle: bool) -> TfmdDL:
    dl = TfmdDL(list(range(n)), bs=bs, shuffle=shuffle, drop_last=shuffle)
    dl.rng.seed(0)
    return dl


def test_training_shards_are_disjoint_and_never_padded():
    # No process group here: each "rank" computes its shard of the same shuffled order.
    shards = [TrainShardsDL(_loader(35, 4, True), rank=r, world_size=2) for r in (0, 1)]
    idxs = [list(s.get_idxs()) for s in shards]
    assert len(idxs[0]) == len(idxs[1]) == 17  # 35 -> 34: the odd sample is dropped, not repeated
    assert not set(idxs[0]) & set(idxs[1]) and len(set(idxs[0]) | set(idxs[1])) == 34
    assert len(shards[0]) == 17 // 4  # batches per rank, as fastai's TrainEvalCallback counts them


def test_training_shards_skip_batches_done_before_a_resume():
    whole, resumed = _loader(32, 4, True), _loader(32, 4, True)
    a = TrainShardsDL(whole, rank=1, world_size=2)
    b = TrainShardsDL(resumed, rank=1, world_size=2)
    b.skip = 2
    assert list(b.get_idxs()) == list(a.get_idxs())[2 * 4:]
    assert b.skip == 0  # one pass only


def test_validation_shards_pad_then_unpad():
    shards = [ValidShardsDL(_loader(5, 4, False), rank=r, world_size=2) for r in (0, 1)]
    idxs = [list(s.get_idxs()) for s in shards]
    assert idxs == [[0, 1, 2], [3, 4, 0]]  # fastai pads to equal shards; to_detach cuts the copy


def test_single_process_session_and_precision():
    sess = Session()
    assert sess.any_rank(True, False) == [True, False] and sess.broadcast(3) == 3
    assert sess.gather(4) == [4]
    assert "bs 16 per process x 1 = 16" in sess.batch_sizes(16)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="'no', 'fp16' or 'bf16'"):
        resolve_precision("fp8", torch.device("cpu"))


def test_cpu_trains_in_bf16_by_default_only_where_it_pays(monkeypatch):
    from easycls import distributed

    cpu = torch.device("cpu")
    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision(None, cpu, 64) == resolve_precision(None, cpu, 224) == "bf16"
    # below 64 px a bf16 step is no faster, and tiny maps gave non-finite gradients
    assert resolve_precision(None, cpu, 32) == "no" and resolve_precision(None, cpu) == "no"
    assert resolve_precision("no", cpu, 224) == "no"
    assert resolve_precision("bf16", cpu, 16) == "bf16"  # asked for
    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: False)  # emulated: slower
    assert resolve_precision(None, cpu, 224) == "no"


def test_native_bf16_read_from_cpu_flags():
    from easycls.distributed import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags : fpu avx512f amx_tile amx_bf16 amx_int8")
    assert cpu_has_native_bf16("Features : fp asimd bf16 i8mm")  # Arm
    assert not cpu_has_native_bf16("flags : fpu sse2 avx2 avx512f avx512bw avx512_vnni")
    assert not cpu_has_native_bf16("")


def test_accelerate_launch_default_keeps_bf16_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")  # only the device's type is read: no GPU needed
    # what `accelerate launch` sets by default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolve_precision(None, cuda) == "bf16"
    assert resolve_precision("no", cuda) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # a mode given to the launcher counts
    assert resolve_precision(None, cuda) == "fp16"


def _launcher(*args: str) -> list[str]:
    with socket.socket() as s:  # a free port: with port 0 the second rank would not find the first
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        *args,
    ]


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        _launcher(*args), capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    root = tmp_path / "split"
    # 96 = 6 batches of 8 on each of 2 ranks
    write_class_folders(root / "train", per_class=32, seed=1)
    # 21: odd, so fastai pads one for rank 1
    write_class_folders(root / "valid", per_class=7, seed=2)
    work = tmp_path / "work"
    work.mkdir()
    res = _torchrun(str(PROBE), str(root), "run", "records", cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    r0, r1 = (json.loads((work / "records" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2

    assert r0["weights"] == r1["weights"]  # DDP kept the replicas identical
    assert len(r0["seen"]) == 2  # two epochs
    for a, b in zip(r0["seen"], r1["seen"]):  # each training sample exactly once per epoch
        assert len(a) == len(b) == 48 and sorted(a + b) == list(range(96))

    # Validation metrics equal a single-process evaluation of the saved model.
    same = ("accuracy", "valid_loss", "n_valid")
    assert [r0["metrics"][k] for k in same] == [r1["metrics"][k] for k in same] and r0["metrics"][
        "n_valid"
    ] == 21
    probs = easycls.load(work / "run", device="cpu").probabilities(r0["valid_refs"])
    single = single_label_metrics(torch.from_numpy(probs), torch.tensor(r0["valid_targets"]))
    for k in ("accuracy", "valid_loss", "n_valid"):
        assert np.isclose(r0["metrics"][k], single[k], atol=1e-4), k

    # One set of files, written once (rank 1 wrote nothing of its own).
    assert sorted(p.name for p in work.iterdir()) == ["records", "run"]
    files = {p.name for p in (work / "run").iterdir()}
    assert {
        "model.safetensors",
        "model.json",
        "metrics.json",
        "history.csv",
        "config.json",
    } <= files
    assert "checkpoint.pth" not in files  # removed once the run completed
    assert not any(n.endswith(".tmp") for n in files)
    rows = (work / "run" / "history.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch, not one per rank
    shutil.rmtree(work / "run")


@pytest.mark.slow
def test_an_error_stops_every_rank_and_is_shown_once(tmp_path):
    res = _torchrun(
        "-m", "easycls", "fit", str(tmp_path / "no_such_folder"), "--quiet", cwd=tmp_path
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert out.count("error:") == 1, out


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_once_and_resumes(tmp_path):
    import signal
    import time
    root = tmp_path / "split"
    write_class_folders(root / "train", per_class=32, seed=1)
    write_class_folders(root / "valid", per_class=7, seed=2)
    run = tmp_path / "run"
    args = [
        "-m",
        "easycls",
        "fit",
        str(root),
        "--arch",
        "mobilenetv3_small_050",
        "--no-pretrained",
        "--epochs",
        "4",
        "--size",
        "32",
        "--bs",
        "8",
        "--lr",
        "2e-3",
        "--workers",
        "0",
        "--out",
        str(run),
        "--quiet",
    ]
    proc = subprocess.Popen(
        _launcher(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    t0 = time.time()
    while not (run / "checkpoint.pth").exists():
        assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    out = proc.communicate(timeout=120)[0]
    assert out.count(f"easycls fit --resume {run}") == 1, out  # rank 0 says it, once
    res = _torchrun("-m", "easycls", "fit", "--resume", str(run), "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = (run / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [0, 1, 2, 3]


@pytest.mark.slow
def test_lr_find_under_two_processes(tmp_path):
    root = tmp_path / "split"
    write_class_folders(root / "train", per_class=32, seed=1)
    write_class_folders(root / "valid", per_class=7, seed=2)
    res = _torchrun(
        "-m",
        "easycls",
        "fit",
        str(root),
        "--arch",
        "mobilenetv3_small_050",
        "--no-pretrained",
        "--epochs",
        "1",
        "--size",
        "32",
        "--bs",
        "8",
        "--workers",
        "0",
        "--out",
        "run",
        "--lr",
        "find",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (res.stdout + res.stderr).count("(full search, ") == 1  # rank 0 says it, once
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 2  # no lr_find rows


def test_a_rank_leaves_the_group_before_python_finalizes(monkeypatch):
    """At exit the process group is destroyed while Python runs (gloo's threads otherwise
    aborted finished two-process jobs); a clean exit waits for the peers, an error does not."""
    import torch.distributed as dist

    from easycls import distributed as d

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(d, "EXIT_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(d, "_clean_exit", True)
    d._leave_group()
    assert calls == ["barrier", "destroy"]
    calls.clear()
    d.leaving_on_error()  # the CLI's error exits and uncaught exceptions say so
    d._leave_group()
    assert calls == ["destroy"]
    seen = []
    hook = d._note_uncaught(lambda *exc: seen.append(exc))
    monkeypatch.setattr(d, "_clean_exit", True)
    hook(ValueError, ValueError("x"), None)
    assert d._clean_exit is False and len(seen) == 1
