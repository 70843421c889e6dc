"""Reading pixels robustly: paths and zip members in, RGB images or arrays out.

Image references are plain strings so they pickle cheaply into DataLoader
workers: a filesystem path, or a zip member written ``"<zip path>!/<member>"``.
Every failure to read becomes :class:`UnreadableImage` with a short reason, so
callers can record a skip instead of crashing mid-epoch.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # object storage (s3://...): a copy of this file beside an exported predict.py has none
    from . import remote
except ImportError:
    remote = None

_MISSING_REMOTE = (remote.MissingObject,) if remote is not None else ()

__all__ = [
    "available_cores",
    "IMAGE_EXTENSIONS",
    "ZIP_SEP",
    "UnreadableImage",
    "check_images",
    "is_image_name",
    "load_resized",
    "square_rgb",
    "open_image",
    "parallel_map",
    "resize_square",
    "split_zip_ref",
    "to_pixels",
    "to_rgb",
    "zip_member_info",
    "zip_ref",
]

ZIP_SEP = "!/"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_OS_LITTER = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
# Transparent pixels are composited onto white: it is what viewers show for
# logos and product cut-outs, and their hidden RGB values are often garbage.
_BACKGROUND = (255, 255, 255)
_T = TypeVar("_T")
_R = TypeVar("_R")
_CHUNK = 64  # items per thread task: amortizes scheduling, keeps progress smooth
# Zip members are read whole into memory: refuse the ones no image file comes near. Image
# formats are compressed already (JPEG, PNG, WebP barely shrink in a zip); only flat raw
# bitmaps compress a hundredfold, and they are small.
_MAX_MEMBER = 1 << 30
_READ_AT_ONCE = 64 << 20  # bytes: a file up to this size is read in one call
_BOMB_SIZE, _BOMB_RATIO = 32 << 20, 100


class UnreadableImage(Exception):
    """An image that cannot be decoded.

    Attributes:
        ref: the image reference (path or zip ref).
        reason: short cause: ``"missing"``, ``"zero-byte file"``, ``"not an image"``,
            ``"truncated"``, ``"not a file"``, ``"permission denied"``, or one with
            a detail: ``"corrupt: ..."``, ``"bad zip: ..."``, ``"too large: ..."``,
            ``"unsupported mode ...: ..."``.
    """

    def __init__(self, ref: str, reason: str):
        super().__init__(f"{ref}: {reason}")
        self.ref, self.reason = ref, reason

    def __reduce__(self):
        # Keep the two-argument constructor working across process pools.
        return (type(self), (self.ref, self.reason))


# ---------------------------------------------------------------- references


def zip_ref(zip_path: str | os.PathLike, member: str) -> str:
    """Reference to ``member`` inside the archive ``zip_path``.

    Example:
        >>> zip_ref("/data/pets.zip", "cats/1.jpg")
        '/data/pets.zip!/cats/1.jpg'
    """
    return f"{os.path.abspath(zip_path)}{ZIP_SEP}{member}"


def split_zip_ref(ref: str | os.PathLike) -> tuple[str, str] | None:
    """``(zip_path, member)`` for a zip reference, ``None`` for a plain path."""
    zip_path, sep, member = os.fspath(ref).partition(ZIP_SEP)
    if not sep or not zip_path.lower().endswith(".zip"):
        return None
    return zip_path, member


def is_image_name(name: str) -> bool:
    """True for names with an image extension that are not OS litter.

    Hidden files, AppleDouble ``._x.jpg`` files, anything under ``__MACOSX/``
    and ``Thumbs.db``/``.DS_Store`` are litter that zips and folders carry.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if "__MACOSX" in path.parts or path.name.startswith("."):
        return False
    if path.name.lower() in _OS_LITTER:
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------- zip handles

_zip_handles: dict[tuple[str, int], tuple[zipfile.ZipFile, tuple[int, int]]] = {}
_zip_lock = threading.Lock()


def _reset_zip_lock() -> None:
    # A fork while another thread held the lock would leave it locked forever in the child.
    global _zip_lock
    _zip_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_zip_lock)


def _zip_handle(zip_path: str) -> zipfile.ZipFile:
    """A ZipFile cached per process; forked workers must not share file offsets."""
    st = os.stat(zip_path)
    key, sig = (zip_path, os.getpid()), (st.st_size, st.st_mtime_ns)
    with _zip_lock:
        cached = _zip_handles.get(key)
        if cached is None or cached[1] != sig:  # reopen if the archive was rewritten
            cached = (zipfile.ZipFile(zip_path), sig)
            _zip_handles[key] = cached
        return cached[0]


def zip_member_info(ref: str) -> zipfile.ZipInfo:
    """The ZipInfo of a zip reference (raises KeyError if the member is absent)."""
    zip_path, member = split_zip_ref(ref)
    return _zip_handle(zip_path).getinfo(member)


def _read_source(ref: str) -> str | io.BytesIO:
    """Something ``Image.open`` accepts; raises UnreadableImage for absent/empty.

    A file of usual size is read in one call (Pillow reading it itself makes dozens of small
    reads); a larger one (a huge TIFF, or no image at all) is left for Pillow to read as it
    goes, which also stops early on a file that is not an image.
    """
    parts = split_zip_ref(ref)
    try:
        # A RemoteError (the storage, not this image) stops the run.
        if remote is not None and remote.is_remote(ref):
            data = remote.read_bytes(ref)
        elif parts is None:
            with open(ref, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > _READ_AT_ONCE:
                    return ref
                data = f.read()
        else:
            zf = _zip_handle(parts[0])
            _refuse_zip_bomb(ref, zf.getinfo(parts[1]))
            data = zf.read(parts[1])
    except IsADirectoryError:
        raise UnreadableImage(ref, "not a file") from None
    except (FileNotFoundError, NotADirectoryError, KeyError, *_MISSING_REMOTE):
        raise UnreadableImage(ref, "missing") from None
    except PermissionError:
        raise UnreadableImage(ref, "permission denied") from None
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as e:
        # Bad CRC, encrypted member, unsupported compression, damaged archive.
        raise UnreadableImage(ref, f"bad zip: {e}") from None
    except OSError as e:  # an I/O error reading the file
        raise UnreadableImage(ref, f"unreadable: {e.strerror or e}") from None
    if not data:
        raise UnreadableImage(ref, "zero-byte file")
    return io.BytesIO(data)


def _refuse_zip_bomb(ref: str, info: zipfile.ZipInfo) -> None:
    """A member that would inflate to far more than any image file, before it is read."""
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _MAX_MEMBER or (info.file_size > _BOMB_SIZE and ratio > _BOMB_RATIO):
        raise UnreadableImage(ref, f"too large: {info.file_size} bytes uncompressed from "
                                   f"{info.compress_size} in the zip (a zip bomb?)")


# ---------------------------------------------------------------- decoding


def _decode_image(ref: str, draft: int | None) -> Image.Image:
    """Open and fully load ``ref`` so truncation fails here, not in a worker later."""
    ref = os.fspath(ref)
    source = _read_source(ref)
    try:
        with Image.open(source) as img:
            if draft is not None:
                # JPEG only: libjpeg decodes at 1/2..1/8 scale, keeping each side >= draft.
                img.draft("RGB", (draft, draft))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return img
    except UnidentifiedImageError:
        raise UnreadableImage(ref, "not an image") from None
    except Image.DecompressionBombError as e:
        raise UnreadableImage(ref, f"too large: {e}") from None
    except IsADirectoryError:
        raise UnreadableImage(ref, "not a file") from None
    except PermissionError:
        raise UnreadableImage(ref, "permission denied") from None
    except MemoryError:
        raise
    except Exception as e:  # plugins raise OSError, SyntaxError, struct.error, ...
        reason = "truncated" if "truncated" in str(e).lower() else f"corrupt: {e}"
        raise UnreadableImage(ref, reason) from None


# Pixels per band when a large image is converted piecewise: temporaries stay a few MB, not a
# float64 copy of the whole image.
_BAND_PIXELS = 1 << 20


def _bands(img: Image.Image) -> Iterator[tuple[int, int]]:
    """(top, bottom) rows of bands of about `_BAND_PIXELS` pixels."""
    step = max(1, _BAND_PIXELS // max(1, img.width))
    for top in range(0, img.height, step):
        yield top, min(img.height, top + step)


def _scale_to_uint8(img: Image.Image) -> Image.Image:
    """8-bit grey from 16-bit, 32-bit int or float pixels, scaled rather than clipped.

    Integer data in 0..65535 is treated as 16-bit (divide by 257), float data in
    0..1 as unit range; anything else is stretched min-to-max. Converted band by band.
    """
    lo, hi = (float(x) for x in img.getextrema()) if img.width * img.height else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        scale, offset = 1 / 257.0, 0.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        scale, offset = 255.0, 0.0
    elif lo < 0 or hi > 255:
        scale, offset = 255.0 / max(hi - lo, 1e-12), lo
    else:
        scale, offset = 1.0, 0.0
    out = np.empty((img.height, img.width), np.uint8)
    for top, bottom in _bands(img):
        a = np.asarray(img.crop((0, top, img.width, bottom))).astype(np.float64)
        a = a / 257.0 if scale == 1 / 257.0 else (a - offset) * scale  # as before, bitwise
        out[top:bottom] = np.clip(np.rint(a), 0, 255)
    return Image.fromarray(out, "L")


def _on_white(img: Image.Image) -> Image.Image:
    """An RGBA image composited on white, as RGB, band by band (no full-size temporaries)."""
    out = Image.new("RGB", img.size)
    for top, bottom in _bands(img):
        band = img.crop((0, top, img.width, bottom))
        background = Image.new("RGBA", band.size, _BACKGROUND + (255,))
        out.paste(Image.alpha_composite(background, band).convert("RGB"), (0, top))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every Pillow mode: 16-bit and float scaled to 8 bits, alpha composited on white.

    Prefer this to ``img.convert("RGB")``, which clips 16-bit data to white and
    exposes whatever colour hides under transparent pixels.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _scale_to_uint8(img)
    if (img.mode == "P" and "transparency" in img.info) or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa"):
        return _on_white(img if img.mode == "RGBA" else img.convert("RGBA"))
    return img.convert("RGB")


def square_rgb(img: Image.Image, size: int) -> np.ndarray:
    """``resize_square(to_rgb(img), size)``, with a grey image (16-bit included) resized before
    it becomes RGB: the same pixels, without a full-size RGB copy of a large grey image."""
    if img.mode == "L" or img.mode in ("I", "F") or img.mode.startswith("I;16"):
        grey = img if img.mode == "L" else _scale_to_uint8(img)
        return np.repeat(resize_square(grey, size)[..., None], 3, axis=2)
    return resize_square(to_rgb(img), size)


def open_image(ref: str, draft: int | None = None) -> Image.Image:
    """Open an image reference as a fully loaded, upright RGB image.

    Args:
        ref: a path or a zip reference (see :func:`zip_ref`).
        draft: if given, JPEGs may decode at reduced scale, keeping both
            sides at least this many pixels (much faster for thumbnails).

    Raises:
        UnreadableImage: missing, empty, not an image, truncated or corrupt.

    Example:
        >>> open_image("cat.jpg").mode
        'RGB'
    """
    img = _decode_image(ref, draft)
    try:
        return to_rgb(img)
    except (OSError, ValueError) as e:  # e.g. LAB without a colour profile
        raise UnreadableImage(ref, f"unsupported mode {img.mode}: {e}") from None


def load_resized(ref: str, size: int) -> np.ndarray:
    """Decode ``ref``, scale the shorter side to ``size`` and center-crop a square.

    JPEGs decode at reduced scale (``draft``) when they are much larger than
    ``size``, which is several times faster than a full decode.

    Returns:
        uint8 array of shape ``(size, size, 3)``.

    Example:
        >>> load_resized("cat.jpg", 64).shape
        (64, 64, 3)
    """
    return resize_square(open_image(ref, draft=size), size)


def to_pixels(image: str | os.PathLike | Image.Image | np.ndarray, size: int) -> np.ndarray:
    """A model's input pixels: uint8 ``(size, size, 3)`` from a file or zip reference
    (`load_resized`), a PIL image (converted to RGB, then `resize_square`) or such an array
    already made (passed through)."""
    if isinstance(image, np.ndarray):
        if image.shape != (size, size, 3) or image.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 {(size, size, 3)}, not {image.dtype} "
                             f"{image.shape}")
        return image
    if isinstance(image, Image.Image):
        return resize_square(image.convert("RGB"), size)
    return load_resized(str(image), size)


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Scale an RGB image's shorter side to ``size`` and center-crop to a square array."""
    w, h = img.size
    side = min(w, h)
    # Resizing only the centered square box crops and scales in one pass.
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


# ---------------------------------------------------------------- checking


def _check_one(ref: str) -> str | None:
    """Reason ``ref`` cannot be read, or None. Draft (1/8 scale) makes JPEGs cheap."""
    try:
        _decode_image(ref, draft=1)
    except UnreadableImage as e:
        return e.reason
    return None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_map(
    fn: Callable[[_T], _R], items: Sequence[_T], workers: int | None = None, progress: bool = False
) -> Iterator[_R]:
    """``map(fn, items)`` on a thread pool, in order, with an optional progress counter.

    Threads, not processes: Pillow releases the GIL while decoding and resizing
    (measured in benchmarks/decode_speed.py), and threads need no pickling, no
    worker start-up and no re-import of the package. Items go out in chunks so
    a million references do not become a million futures.
    """
    workers = workers or available_cores()
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda chunk: [fn(x) for x in chunk], chunks)
        for results in _progress(done, len(items), progress):
            yield from results


def _progress(chunks: Iterable[list], total: int, enabled: bool) -> Iterator[list]:
    """Yield ``chunks``, printing an ``n/total`` counter to stderr when enabled: rewritten in
    place on a terminal; where stderr is a log (CI, SLURM, a file), a plain line every 10 %."""
    n, shown = 0, 0
    terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    for chunk in chunks:
        n += len(chunk)
        if enabled and terminal:
            print(f"\r{n}/{total} images", end="\n" if n >= total else "", file=sys.stderr,
                  flush=True)
        elif enabled and (n >= total or n * 10 // max(1, total) > shown):
            shown = n * 10 // max(1, total)
            print(f"{n}/{total} images", file=sys.stderr, flush=True)
        yield chunk


def check_images(
    refs: Sequence[str], workers: int | None = None, progress: bool = False
) -> dict[int, str]:
    """Find unreadable images by fully decoding each one (JPEGs at 1/8 scale).

    ``PIL.Image.verify`` misses a truncated tail, so every image is loaded.

    Returns:
        ``{index: reason}`` for each unreadable reference.

    Example:
        >>> check_images(["ok.jpg", "empty.jpg"])
        {1: 'zero-byte file'}
    """
    results = parallel_map(_check_one, refs, workers, progress)
    return {i: r for i, r in enumerate(results) if r is not None}
