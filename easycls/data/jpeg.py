"""Reading the compact JPEG store: one image, a batch on CPU threads, or a batch on the GPU.

:class:`JpegStore` reads a built store (``storage.py`` builds it): an index of
``(shard, offset, length)`` per image into a few shard files of JPEGs.
:func:`decode_jpegs` decodes a batch of JPEG byte strings into one uint8 (B, 3, S, S)
tensor: each stored image has its short side at the stored size `S`, so decoding and a
center crop give the same square the uint8 cache holds.
`torchvision.io.decode_jpeg` takes a whole list at once: on CUDA that is one batched
nvJPEG call and the pixels never touch host memory; on CPU it is libjpeg-turbo,
spread here over a few threads (the decoder releases the GIL).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import parallel_map

__all__ = ["JpegStore", "decode_jpegs", "square"]

Blob = bytes | bytearray | memoryview | np.ndarray


def _as_tensor(blob: Blob) -> torch.Tensor:
    # A copy: decode_jpeg wants a writable 1-d uint8 CPU tensor, and blobs are often
    # read-only slices of a memory-mapped shard. JPEGs are small; this costs little.
    return torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy())


def square(img: torch.Tensor, size: int) -> torch.Tensor:
    """The centered `size` x `size` crop of a (3, H, W) image whose short side is `size`
    (an image of another short side is first resized so that it is)."""
    h, w = img.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        hw = (max(size, round(h * scale)), max(size, round(w * scale)))
        img = F.interpolate(img[None].float(), size=hw, mode="bilinear", antialias=True,
                            align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
        h, w = hw
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top:top + size, left:left + size]


def _decode_cpu(blobs: Sequence[Blob], workers: int) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg
    one = lambda b: decode_jpeg(_as_tensor(b), mode=ImageReadMode.RGB)  # noqa: E731
    if workers <= 1 or len(blobs) < 2:
        return [one(b) for b in blobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, blobs))


def decode_jpegs(blobs: Sequence[Blob], size: int, device: torch.device | str = "cpu",
                 workers: int = 1) -> torch.Tensor:
    """One uint8 (B, 3, size, size) tensor on `device` from B JPEG byte strings.

    Args:
        blobs: encoded JPEGs (bytes, memoryviews or uint8 arrays).
        size: side of the square returned; each image's short side should already be `size`.
        device: "cuda" decodes the whole list in one nvJPEG batch on that GPU; "cpu"
            decodes with libjpeg-turbo in `workers` threads.

    Example:
        >>> decode_jpegs([open("a.jpg", "rb").read()], 64).shape
        torch.Size([1, 3, 64, 64])
    """
    device = torch.device(device)
    if device.type == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg
        images = decode_jpeg([_as_tensor(b) for b in blobs], mode=ImageReadMode.RGB, device=device)
    else:
        images = _decode_cpu(blobs, workers)
    return torch.stack([square(img, size) for img in images])


@functools.lru_cache(maxsize=1)
def _cpu_decoder():
    """torchvision's libjpeg-turbo decoder (faster than Pillow's, see docs/large-data.md), or
    None to fall back to Pillow."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, RuntimeError, OSError):
        return None

    def decode(data: bytes) -> np.ndarray:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(raw, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    return decode


class JpegStore:
    """A built store: ``len(store)`` images of ``size`` x ``size`` RGB pixels.

    Attributes:
        path: the store folder.
        size: side of the stored squares.
        failures: ``{index: reason}`` for unreadable images; they decode to zeros.

    Example:
        >>> store = storage.open_pixels(refs, 73, "jpeg").pixels
        >>> store[0].shape, store.decode_batch([0, 5]).shape
        ((73, 73, 3), (2, 73, 73, 3))
    """

    def __init__(self, path: str | os.PathLike, size: int, failures: dict[int, str]):
        self.path, self.size, self.failures = Path(path), size, failures
        self.index = np.load(self.path / "index.npy", mmap_mode="r")
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # Workers reopen the files: descriptors and memory maps must not be pickled.
        return dict(path=self.path, size=self.size, failures=self.failures)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: never share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.path / f"shard-{shard:03d}.bin", os.O_RDONLY)
        return fd

    def read(self, indices: Sequence[int] | np.ndarray) -> list[bytes]:
        """The stored JPEG bytes of each index (empty bytes for an unreadable image)."""
        out = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            shard, offset, length = (int(v) for v in self.index[i])
            out.append(os.pread(self._fd(shard), length, offset) if length else b"")
        return out

    def _decode_into(self, data: bytes, out: np.ndarray) -> None:
        if not data:
            out[...] = 0
            return
        decode = _cpu_decoder()
        if decode is None:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                out[...] = np.asarray(img)
        else:
            out[...] = decode(data)

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as a uint8 ``(size, size, 3)`` array."""
        out = np.empty((self.size, self.size, 3), np.uint8)
        self._decode_into(self.read([i])[0], out)
        return out

    def decode_batch(self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None,
                     workers: int = 1) -> np.ndarray:
        """Images as one uint8 ``(B, size, size, 3)`` array, decoded on the CPU.

        Args:
            indices: which images.
            out: an array to fill (e.g. pinned memory), else a new one.
            workers: decoding threads (Pillow releases the GIL while decoding).
        """
        blobs = self.read(indices)
        if out is None:
            out = np.empty((len(blobs), self.size, self.size, 3), np.uint8)
        if workers > 1 and len(blobs) > 1:
            list(parallel_map(lambda k: self._decode_into(blobs[k], out[k]), range(len(blobs)),
                              workers))
        else:
            for k, data in enumerate(blobs):
                self._decode_into(data, out[k])
        return out

    def __getitem__(self, i):
        """``store[i]``: one image; ``store[[i, j, ...]]``: a batch (like a uint8 array)."""
        if isinstance(i, (int, np.integer)):
            return self.decode(int(i))
        return self.decode_batch(i)

    @property
    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("shard-*.bin"))
