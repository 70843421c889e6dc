"""Miniature replicas of the recipes' real on-disk layouts, with the usual rubbish mixed in.

Each builder writes the exact nesting of the Kaggle download (tiny colour-coded images),
plus a truncated JPEG, a grayscale JPEG, an RGBA PNG and OS litter in the training part,
and returns the folder a user would have after extracting the zip. `make_zip` packs it
the way Kaggle ships it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 20


def image(ci: int, rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """A noisy image whose colour encodes class `ci`, converted to `mode`."""
    hue = np.array([(ci * 97) % 256, (ci * 57 + 80) % 256, (ci * 31 + 160) % 256])
    px = np.clip(hue + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(px)
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(np.full((SIZE, SIZE), 200, np.uint8)))
        return img
    return img.convert(mode)


def write(path: Path, ci: int, rng: np.random.Generator, kind: str = "rgb") -> Path:
    """One image file of `kind`: rgb, gray, rgba, cmyk, palette, 16bit, truncated, zero, text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    if kind in ("zero", "text"):
        path.write_bytes(b"" if kind == "zero" else b"this is not an image\n")
        return path
    mode = {
        "rgb": "RGB",
        "gray": "L",
        "rgba": "RGBA",
        "cmyk": "CMYK",
        "palette": "P",
        "16bit": "I;16",
        "truncated": "RGB",
    }[kind]
    img = image(ci, rng, mode)
    if kind == "truncated":  # big enough that the cut lands in the scan data, not in the header
        img = img.resize((96, 96))
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3] if kind == "truncated" else data)
    return path


def litter(folder: Path) -> None:
    """What macOS, Windows and editors leave behind."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / ".hidden.jpg").write_bytes(b"not really")
    mac = folder / "__MACOSX"
    mac.mkdir(exist_ok=True)
    (mac / "._photo.jpg").write_bytes(b"\0\5\26\7")


def class_folder(
    folder: Path, ci: int, n: int, rng, name=lambda i: f"{i}.jpg", rubbish: bool = False
) -> list[str]:
    """`n` images in `folder`; with `rubbish`, the 1st is truncated, 2nd grayscale, 3rd an RGBA
    PNG."""
    kinds = ["truncated", "gray", "rgba"] if rubbish else []
    written = []
    for i in range(n):
        kind = kinds[i] if i < len(kinds) else "rgb"
        fname = name(i)
        if kind == "rgba":
            fname = str(Path(fname).with_suffix(".png"))
        written.append(write(folder / fname, ci, rng, kind).name)
    return written


def make_zip(folder: Path, zip_path: Path, inner: str = "") -> Path:
    """Zip `folder`'s contents (under `inner/` if given), litter included, like a Kaggle
    download."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            arc = (
                (Path(inner) / p.relative_to(folder)).as_posix()
                if inner
                else p.relative_to(folder).as_posix()
            )
            zf.write(p, arc + ("/" if p.is_dir() else ""))
    return zip_path


# --- the recipes' layouts ----------------------------------------------------------------

ASL_CLASSES = ["A", "B", "space"]


def asl(root: Path, per_class: int = 5, seed: int = 0) -> Path:
    """`asl_alphabet_train/asl_alphabet_train/<cls>/<cls><i>.jpg` and
    `asl_alphabet_test/.../<cls>_test.jpg`."""
    rng = np.random.default_rng(seed)
    train = root / "asl_alphabet_train" / "asl_alphabet_train"
    for ci, c in enumerate(ASL_CLASSES):
        class_folder(
            train / c, ci, per_class, rng, lambda i, c=c: f"{c}{i + 1}.jpg", rubbish=(ci == 0)
        )
    litter(train)
    litter(train / "A")
    test = root / "asl_alphabet_test" / "asl_alphabet_test"
    for ci, c in enumerate(ASL_CLASSES):
        write(test / f"{c}_test.jpg", ci, rng)
    return root


ANIMALS = ["Cat", "Dog", "Zebra"]


def animals15(root: Path, seed: int = 0) -> Path:
    """`Training Data/Training Data/<Class>/<Class>-Train (N).jpeg`, Validation and Testing
    alike."""
    rng = np.random.default_rng(seed)
    for part, tag, n in (
        ("Training", "Train", 5),
        ("Validation", "Valid", 2),
        ("Testing", "Test", 2),
    ):
        base = root / f"{part} Data" / f"{part} Data"
        for ci, c in enumerate(ANIMALS):
            class_folder(base / c, ci, n, rng, lambda i, c=c, tag=tag: f"{c}-{tag} ({i + 1}).jpeg",
                         rubbish=(part == "Training" and ci == 1))
        litter(base)
    return root


WNIDS = ["n01443537", "n01629819", "n02124075"]
WORDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander, "
                                                                  "Salamandra salamandra",
         "n02124075": "Egyptian cat", "n09999999": "unused entry"}


def tiny_imagenet(parent: Path, seed: int = 0) -> Path:
    """`tiny-imagenet-200/` with wnids.txt, words.txt, train/<wnid>/images, val/ + annotations,
    test/."""
    rng = np.random.default_rng(seed)
    root = parent / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()))
    for ci, w in enumerate(WNIDS):
        names = class_folder(
            root / "train" / w / "images",
            ci,
            5,
            rng,
            lambda i, w=w: f"{w}_{i}.JPEG",
            rubbish=(ci == 2),
        )
        (root / "train" / w / f"{w}_boxes.txt").write_text(
            "".join(f"{n}\t0\t0\t63\t63\n" for n in names)
        )
    lines = []
    for k in range(6):
        ci = k % 3
        write(root / "val" / "images" / f"val_{k}.JPEG", ci, rng)
        lines.append(f"val_{k}.JPEG\t{WNIDS[ci]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    for k in range(4):
        write(root / "test" / "images" / f"test_{k}.JPEG", k % 3, rng)
    litter(root / "train")
    return root


def imagenet_kaggle(root: Path, seed: int = 0) -> Path:
    """Kaggle's ILSVRC layout: ILSVRC/Data/CLS-LOC/{train/<wnid>,val,test} and LOC_*.csv/txt."""
    rng = np.random.default_rng(seed)
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    for ci, w in enumerate(WNIDS):
        class_folder(
            data / "train" / w, ci, 5, rng, lambda i, w=w: f"{w}_{i}.JPEG", rubbish=(ci == 0)
        )
    rows = []
    for k in range(6):
        name = f"ILSVRC2012_val_{k + 1:08d}"
        write(data / "val" / f"{name}.JPEG", k % 3, rng)
        rows.append(f"{name},{WNIDS[k % 3]} 10 12 50 60 {WNIDS[k % 3]} 1 2 3 4\n")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in WNIDS))
    (root / "LOC_sample_submission.csv").write_text("ImageId,PredictionString\n")
    for k in range(2):
        write(data / "test" / f"ILSVRC2012_test_{k + 1:08d}.JPEG", k, rng)
    litter(data / "train")
    return root


def imagenet_folders(root: Path, seed: int = 0) -> Path:
    """The ILSVRC class-folder layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    rng = np.random.default_rng(seed)
    for ci, w in enumerate(WNIDS):
        class_folder(
            root / "train" / w, ci, 5, rng, lambda i, w=w: f"{w}_{i}.JPEG", rubbish=(ci == 1)
        )
        class_folder(root / "val" / w, ci, 2, rng, lambda i, ci=ci: f"ILSVRC2012_val_{ci}{i}.JPEG")
    litter(root / "train")
    return root


def comp5329(parent: Path, seed: int = 0, n_train: int = 15, n_test: int = 4) -> Path:
    """`COMP5329S1A2Dataset/` with train.csv (ImageID,Labels,Caption), test.csv and data/*.jpg."""
    rng = np.random.default_rng(seed)
    root = parent / "COMP5329S1A2Dataset"
    combos = [["1"], ["2"], ["1", "3"], ["3"], ["2", "3"]]
    lines = ["ImageID,Labels,Caption"]
    for i in range(n_train):
        labels = combos[i % len(combos)]
        kind = {0: "truncated", 1: "gray", 2: "rgb"}.get(i, "rgb")
        write(root / "data" / f"{i}.jpg", int(labels[0]), rng, kind)
        # Unquoted commas and quotes in captions, as in the real file.
        lines.append(f'{i}.jpg,{" ".join(labels)},A "photo" of things, with commas, {i}')
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    test = ["ImageID,Caption"]
    for k in range(n_test):
        i = n_train + k
        write(root / "data" / f"{i}.jpg", k % 3 + 1, rng)
        test.append(f"{i}.jpg,Another caption, with a comma")
    (root / "test.csv").write_text("\n".join(test) + "\n")
    litter(root / "data")
    return root
