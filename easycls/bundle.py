"""Safe model bundles: `model.safetensors` + `model.json`, and `load()` -> `Predictor`.

Loading reads JSON and safetensors only, so opening a bundle never runs code from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors import safe_open
from safetensors.torch import _remove_duplicate_names, load_model
from safetensors.torch import save as st_save
from torch import nn

from . import __version__
from .bundle_schema import CUSTOM, BundleError, check_meta, read_json_object
from .data.images import IMAGE_EXTENSIONS, UnreadableImage, available_cores, to_pixels
from .decide import Decider
from .fuse import fuse_batchnorm
from .models import build_custom, size_kwargs
from .safeio import ensure_room, write_bytes, write_text

__all__ = ["save_bundle", "load", "Predictor", "read_meta", "expand_inputs", "bare_model",
           "BundleError", "WEIGHTS", "META"]

WEIGHTS, META = "model.safetensors", "model.json"


def bare_model(model: nn.Module) -> nn.Module:
    """The model without DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_bundle(model: nn.Module, out: str | Path, *, arch: str, classes: Sequence[str], size: int,
                mean: Sequence[float], std: Sequence[float], multi_label: bool = False,
                thresholds: dict | None = None, extra: dict | None = None) -> Path:
    """Write `model.safetensors` and `model.json` into `out`; returns `out`.

    Both files are written atomically (`safeio`), after checking that the disk has room for
    both: a full disk leaves the previous bundle (or none), never half of one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(arch=arch, classes=list(classes), multi_label=multi_label, thresholds=thresholds,
                input_size=size, mean=[float(m) for m in mean], std=[float(s) for s in std],
                easycls_version=__version__, **(extra or {}))
    weights, text = _weights_bytes(bare_model(model)), json.dumps(meta, indent=2) + "\n"
    ensure_room(out, len(weights) + len(text), "the model bundle")
    write_bytes(out / WEIGHTS, weights)
    write_text(out / META, text)
    return out


def _weights_bytes(model: nn.Module) -> bytes:
    """The model's safetensors file as bytes, shared tensors stored once (as `save_model` does)."""
    state = model.state_dict()
    for dropped in _remove_duplicate_names(state).values():
        for name in dropped:
            del state[name]
    # contiguous: safetensors stores no strides (channels_last weights are copied)
    return st_save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def read_meta(run_dir: str | Path) -> dict:
    """The checked `model.json` of a run directory (see `bundle_schema.check_meta`)."""
    path = Path(run_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {META}: give the run directory that "
                                "`easycls fit` wrote")
    return check_meta(read_json_object(path), path)


def load(run_dir: str | Path, model: nn.Module | None = None,
         device: str | torch.device | None = None) -> Predictor:
    """Load a bundle written by `fit` (JSON + safetensors, no pickle, no network).

    Every value of `model.json` and the shapes in `model.safetensors` are checked before the
    model is built; anything wrong raises `BundleError` naming the file and the key. The
    loaded model is for inference: in eval mode, channels-last, each batch norm that follows
    a convolution folded into it (`fuse.fuse_batchnorm`; same outputs, faster).

    Args:
        run_dir: the run directory (holds model.json and model.safetensors).
        model: an instance of the architecture, needed only for custom (non-timm) models.
        device: where to run; default CUDA when available.

    Example:
        >>> p = load("runs/digits-resnet18")
        >>> label, prob = p.predict("seven.png")
    """
    meta = read_meta(run_dir)
    weights = Path(run_dir) / WEIGHTS
    shapes = _file_shapes(weights)
    rebuilt = model is None
    try:
        # The file's shapes against the model's (class count x feature width included),
        # checked on a model without memory ("meta" tensors) before the real one is built.
        _check_shapes(_model_of(meta, "meta") if rebuilt else model, shapes, weights, meta)
    except BundleError as e:
        if rebuilt and meta["arch"].startswith(CUSTOM):  # its name builds other layers
            raise BundleError(f"{e}; the custom model's name does not rebuild it: pass an "
                              "instance: easycls.load(dir, model=...)") from None
        raise
    model = _model_of(meta) if rebuilt else model
    load_model(model, str(weights))
    _check_finite(model, weights)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Batch norm folded into the convolutions, and channels-last convolutions: both infer
    # faster, on CPU as on CUDA (docs/performance.md).
    model, _ = fuse_batchnorm(model.eval(), meta["input_size"])
    model = model.to(device).to(memory_format=torch.channels_last)
    return Predictor(model, meta, device)


def _file_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors header (no tensor is read)."""
    if not path.is_file():
        raise BundleError(f"{path.parent} holds no {WEIGHTS}: the run did not finish, or the "
                          "file was removed")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise BundleError(f"{path} is not a readable safetensors file ({e})") from None


def _check_shapes(model: nn.Module, shapes: dict, path: Path, meta: dict) -> None:
    wanted = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(wanted) - set(shapes))
    extra = sorted(set(shapes) - set(wanted))
    wrong = [k for k in wanted if k in shapes and shapes[k] != wanted[k]]
    if not (missing or extra or wrong):
        return
    what = (f"{meta['arch']} with {len(meta['classes'])} classes "
            f"(as {path.with_name(META).name} says)")
    if wrong:
        k = wrong[0]
        raise BundleError(f"{path}: tensor {k!r} has shape {shapes[k]}, but {what} needs "
                          f"{wanted[k]} ({len(wrong)} tensor(s) differ)")
    raise BundleError(f"{path} does not hold the weights of {what}: missing {missing[:3]}, "
                      f"unexpected {extra[:3]}")


def _model_of(meta: dict, device: str = "cpu") -> nn.Module:
    n = len(meta["classes"])
    with torch.device(device):
        if meta["arch"].startswith(CUSTOM):  # "custom:<module>:<qualname>", if importable
            try:
                return build_custom(meta["arch"], n)
            except ValueError as e:
                raise BundleError(str(e)) from None
        # A plain registry name (checked above) with pretrained=False: built offline, at the
        # size it was trained at where the model is made for one size (ViT, Swin, ...).
        return timm.create_model(meta["arch"], pretrained=False, num_classes=n,
                                 **size_kwargs(meta["arch"], meta.get("input_size")))


def _check_finite(model: nn.Module, path: Path) -> None:
    """Refuse weights holding NaN or infinity: every prediction would be `nan`."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{path}: tensor {name!r} holds NaN or infinite values (the "
                              "training diverged): train again, e.g. with a lower --lr")


def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Files as given, folders expanded to the images inside them (sorted)."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*")
                          if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{item} does not exist")
    return out


class _Inputs:
    """(n, size, size, 3) uint8 batches -> the model's normalized float input on the device,
    (n, 3, size, size) channels-last: validation's `(x / 255 - mean) / std`, up to float
    rounding.

    Two things make this several times cheaper than `(x.float() - mean) / std` on a CPU: the
    arithmetic runs on rows of the NHWC layout, where mean and std repeat every 3 values and
    broadcast over a long contiguous row (a (1, 3, 1, 1) broadcast over channels-last memory
    does not vectorize); and the float batch reuses one buffer, where a fresh one of tens of
    MB is new pages from the OS on every batch.
    """

    def __init__(self, meta: dict, device: torch.device):
        self.size, self.device, self._buf = meta["input_size"], device, None
        self._mean = (torch.tensor(meta["mean"]) * 255).repeat(self.size).to(device)
        self._std = (torch.tensor(meta["std"]) * 255).repeat(self.size).to(device)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        n, s = len(batch), self.size
        rows = torch.from_numpy(batch).to(self.device).view(n * s, s * 3)
        if self.device.type != "cpu":  # the CUDA caching allocator reuses memory itself
            x = rows.float()
        else:
            if self._buf is None or len(self._buf) < n * s:
                self._buf = torch.empty(n * s, s * 3)
            x = self._buf[: n * s].copy_(rows)
        return x.sub_(self._mean).div_(self._std).view(n, s, s, 3).permute(0, 3, 1, 2)


# glibc serves an allocation above 32 MB with fresh pages from the OS every time (a page
# fault per 4 KB, on every batch); memory freed below that is reused.
_FRESH_PAGES_ABOVE = 32 << 20


def _cpu_chunk(model: nn.Module, size: int) -> int:
    """Images per model call on a CPU: as many as keep the largest activation under the size
    the allocator reuses (faster than 64 images at once: docs/performance.md)."""
    largest = 0

    def hook(module, inputs, out) -> None:
        nonlocal largest
        if isinstance(out, torch.Tensor):
            largest = max(largest, out.nbytes)

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last))
    finally:
        for h in hooks:
            h.remove()
    return max(1, _FRESH_PAGES_ABOVE // max(largest, 1))


def _done(batch: tuple, empty: np.ndarray) -> tuple[list[int], np.ndarray, dict[int, str]]:
    where, probs, bad = batch
    return where, (empty if probs is None else probs.cpu().numpy()), bad


class Predictor(Decider):
    """Applies a trained bundle to images: same resizing and normalization as validation.
    Classes, thresholds and decisions come from `decide.Decider`."""

    runtime = "torch"

    def __init__(self, model: nn.Module, meta: dict, device: torch.device):
        super().__init__(meta)
        self.model, self.device = model, device
        self._cpu_chunk: int | None = None  # images per model call on a CPU, set on first use

    def _pixels_or_error(self, image) -> np.ndarray | UnreadableImage:
        try:
            return to_pixels(image, self.size)
        except UnreadableImage as e:
            return e

    def _decoded(self, images: Sequence, bs: int, pool: ThreadPoolExecutor
                 ) -> Iterator[tuple[int, list]]:
        """(start, decoded images or errors) per batch, decoded over the pool's threads
        (Pillow releases the GIL while decoding and resizing)."""
        for s in range(0, len(images), bs):
            yield s, list(pool.map(self._pixels_or_error, images[s:s + bs]))

    def _forward(self, pixels: list[np.ndarray], inputs: _Inputs) -> torch.Tensor:
        """Probabilities on the device; on CUDA the call returns before the model has run."""
        x = inputs(np.stack(pixels))
        if self.device.type == "cpu":
            if self._cpu_chunk is None:
                self._cpu_chunk = _cpu_chunk(self.model, self.size)
            k = self._cpu_chunk
            logits = torch.cat([self.model(x[i:i + k]) for i in range(0, len(x), k)]).float()
        else:
            logits = self.model(x).float()
        return logits.sigmoid() if self.multi_label else logits.softmax(1)

    @torch.inference_mode()
    def stream(self, images: Sequence, bs: int = 64, workers: int | None = None
               ) -> Iterator[tuple[list[int], np.ndarray, dict[int, str]]]:
        """Probabilities batch by batch, skipping unreadable images; each file is read once.

        Each batch is decoded on `workers` threads (default: every core), then goes through
        the model. On a CPU the two take turns, each with every core (run side by side, the
        model's threads and the decoder's fight for the cores); on a GPU the next batch is
        decoded while the model runs on this one.

        Yields:
            (positions in `images` of the readable ones, their (n, classes) probabilities,
            {position: reason} for the unreadable ones of the batch).

        Example:
            >>> for where, probs, bad in predictor.stream(paths, bs=64):
            ...     print(len(where), probs.shape, bad)
        """
        images, inputs = list(images), _Inputs(self.meta, self.device)
        empty = np.zeros((0, len(self.classes)), np.float32)
        with ThreadPoolExecutor(max_workers=workers or available_cores()) as pool:
            running = None  # the batch the model is on: (positions, probabilities, bad)
            for start, decoded in self._decoded(images, bs, pool):
                ok = [k for k, d in enumerate(decoded) if not isinstance(d, UnreadableImage)]
                bad = {start + k: d.reason for k, d in enumerate(decoded)
                       if isinstance(d, UnreadableImage)}
                probs = self._forward([decoded[k] for k in ok], inputs) if ok else None
                if running is not None:
                    yield _done(running, empty)
                running = ([start + k for k in ok], probs, bad)
            if running is not None:
                yield _done(running, empty)

    def probabilities(self, images: Sequence, bs: int = 64, workers: int | None = None
                      ) -> np.ndarray:
        """(n, classes) softmax (single-label) or sigmoid (multi-label) probabilities.

        Raises:
            UnreadableImage: an image cannot be decoded (`stream` skips them instead).
        """
        images, outs = list(images), []
        for _, probs, bad in self.stream(images, bs, workers):
            if bad:
                i, reason = next(iter(bad.items()))
                raise UnreadableImage(str(images[i]), reason)
            outs.append(probs)
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), np.float32)
