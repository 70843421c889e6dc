"""Helpers of the example scripts (the library does not use them).

Tiny generated stand-ins of the real datasets, in their real layouts, for `--smoke` runs
(each image's mean colour encodes its class, so one epoch learns something), and the
relaunch of a script under `accelerate launch` for multi-GPU runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# Settings that keep a smoke run to seconds on a CPU: small from-scratch model, small images.
SMOKE_FIT = dict(arch="resnet18", pretrained=False, epochs=1, size=32, bs=8, lr=2e-3, quiet=True)


def image(ci: int, rng: np.random.Generator, side: int = 32) -> Image.Image:
    hue = np.array([(ci * 97) % 256, (ci * 57 + 80) % 256, (ci * 31 + 160) % 256])
    return Image.fromarray(
        np.clip(hue + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
    )


def class_folders(root: Path, classes: list[str], n: int, seed: int = 0, ext: str = ".jpg") -> Path:
    """`root/<class>/<class>_<i><ext>`."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image(ci, rng).save(root / c / f"{c}_{i}{ext}")
    return root


def animals15_zip(root: Path) -> Path:
    """The Kaggle animals zip layout: `Training Data/Training Data/<Class>/...` (+ Validation,
    Testing)."""
    folder = root / "animals"
    for part, n, seed in (("Training", 10, 0), ("Validation", 3, 1), ("Testing", 3, 2)):
        class_folders(
            folder / f"{part} Data" / f"{part} Data", ["Cat", "Dog", "Zebra"], n, seed, ".jpeg"
        )
    archive = root / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*.jpeg")):
            z.write(f, f.relative_to(folder).as_posix())
    shutil.rmtree(folder)
    return archive


def comp5329(root: Path, n_train: int = 48, n_test: int = 8) -> Path:
    """`COMP5329S1A2Dataset/`: train.csv (ImageID,Labels,Caption with commas), test.csv, data/."""
    rng = np.random.default_rng(0)
    base = root / "COMP5329S1A2Dataset"
    (base / "data").mkdir(parents=True)
    combos = [["1"], ["2"], ["1", "3"], ["3"], ["2", "3"], ["1", "2"]]
    lines, test = ["ImageID,Labels,Caption"], ["ImageID,Caption"]
    for i in range(n_train + n_test):
        labels = combos[i % len(combos)]
        image(int(labels[0]), rng).save(base / "data" / f"{i}.jpg")
        if i < n_train:
            lines.append(f'{i}.jpg,{" ".join(labels)},A "photo" of things, with commas')
        else:
            test.append(f"{i}.jpg,a caption, with a comma")
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    (base / "test.csv").write_text("\n".join(test) + "\n")
    return base


def asl(root: Path, classes: list[str] = ("A", "B", "del", "nothing"), n: int = 10) -> Path:
    """`asl_alphabet_train/asl_alphabet_train/<cls>/<cls><i>.jpg` and one test photo per class."""
    class_folders(root / "asl_alphabet_train" / "asl_alphabet_train", list(classes), n)
    test = root / "asl_alphabet_test" / "asl_alphabet_test"
    test.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for ci, c in enumerate(classes):
        image(ci, rng).save(test / f"{c}_test.jpg")
    return root


def launch(processes: int, argv: list[str]) -> None:
    """Run this script again under `accelerate launch` with `processes` processes (DDP)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_processes",
        str(processes),
    ]
    cmd += ["--multi_gpu"] if processes > 1 else []
    subprocess.run(cmd + argv, check=True, env={**os.environ, "EASYCLS_WORKER": "1"})


def is_worker() -> bool:
    """True inside a process started by `launch` (or any launcher)."""
    return "WORLD_SIZE" in os.environ or os.environ.get("EASYCLS_WORKER") == "1"
