"""Decode a batch of JPEG byte strings into one uint8 (B, 3, S, S) tensor, on the GPU when asked.

For the compact JPEG store: each stored image has its short side at the stored size
`S`, so decoding and a center crop give the same square the uint8 cache holds.
`torchvision.io.decode_jpeg` takes a whole list at once: on CUDA that is one batched
nvJPEG call and the pixels never touch host memory; on CPU it is libjpeg-turbo,
spread here over a few threads (the decoder releases the GIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["decode_jpegs", "square"]

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
