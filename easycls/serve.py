"""`easycls serve`: a web page and a REST API over a run directory (FastAPI + uvicorn).

The app runs on a backend: the torch `Predictor` of a run (`bundle.load`), or an exported
ONNX model on onnxruntime (`onnx_predictor.OnnxPredictor`), in which case nothing here
imports torch. Both have the same interface (`probabilities`, `decide`, `classes`, `meta`),
so the endpoints, limits, batching and upload handling below are one copy for both.

Requests are decoded in worker threads and queued; one inference thread takes what has
arrived (up to `max_batch` images, waiting at most `max_wait_ms` for more) and runs it as one
batch, so concurrent clients share forward passes and the event loop never runs the model.
Uploads are parsed in memory, size-capped while they stream in, and checked before decoding.
Memory is bounded by decoded pixels, read from each image's header before it is decoded: one
image, one request, and all the decodes in flight across requests (`PixelBudget`) each have a
limit in megapixels; what exceeds them gets a 413 naming the limit and the flag that raises it.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .data.images import square_rgb
from .decide import Decider

__all__ = ["create_app", "serve", "open_backend", "Batcher", "UploadError", "decode_upload",
           "decoded_pixels", "PixelBudget", "MAX_MB", "MAX_MEGAPIXELS"]

MAX_MB = 10.0
MAX_FILES = 64
TOP_K = 5
# The largest image in decoded megapixels (Pillow's own bomb limit is 89.5); a request may
# bring REQUEST_IMAGES times that in all, and the decodes in flight across requests hold at
# most that much at once (docs/use.md: the peak memory this gives).
MAX_MEGAPIXELS = 90.0
REQUEST_IMAGES = 4
# A body refused for its size is still read (and dropped) up to this many bytes, so a client
# that sends it whole (Python's urllib) reads the 413 instead of a reset connection.
DRAIN_BYTES = 256 << 20


class UploadError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# ---------------------------------------------------------------- batching


class Batcher:
    """Gathers concurrent requests into batches for `infer`, which runs on one worker thread.

    Args:
        infer: images -> (n, classes) probabilities; called with up to `max_batch` images
            (more when a single request brings more).
        max_batch: images per batch; 1 turns batching off (one request at a time).
        max_wait: seconds a batch waits for company once the first request is in.
    """

    def __init__(self, infer: Callable[[list], np.ndarray], max_batch: int = 32,
                 max_wait: float = 0.005):
        self.infer, self.max_batch, self.max_wait = infer, max(1, max_batch), max_wait
        self.batches = 0   # forward batches run, and the images in them (for /healthz)
        self.images = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="easycls-infer")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._executor.shutdown(wait=True)
        self._task = None

    async def __call__(self, images: Sequence) -> np.ndarray:
        """Probabilities of `images`, computed in a batch with whatever else is waiting."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not awaited (run the app with its lifespan)")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((list(images), future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            await self._run(batch)

    async def _gather(self) -> list:
        """The first waiting request, plus those arriving within `max_wait`, up to max_batch."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        n, deadline = len(batch[0][0]), loop.time() + self.max_wait
        while n < self.max_batch:
            item = await self._next(deadline - loop.time())
            if item is None:
                break
            batch.append(item)
            n += len(item[0])
        return batch

    async def _next(self, timeout: float):
        if not self._queue.empty() or timeout <= 0:
            return None if self._queue.empty() else self._queue.get_nowait()
        # asyncio.wait, not wait_for: on a timeout a finished get() must not drop its item.
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter}, timeout=timeout)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    async def _run(self, batch: list) -> None:
        images = [im for ims, _ in batch for im in ims]
        loop = asyncio.get_running_loop()
        try:
            probs = await loop.run_in_executor(self._executor, self.infer, images)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.batches, self.images = self.batches + 1, self.images + len(images)
        start = 0
        for ims, future in batch:
            if not future.done():  # a client that went away has a cancelled future
                future.set_result(probs[start:start + len(ims)])
            start += len(ims)


# ---------------------------------------------------------------- uploads


def _opened(name: str, data: bytes, size: int, max_pixels: int):
    """`Image.open` of an upload (the header only), at the scale it will decode at, after the
    per-image pixel check. A context manager, like `Image.open`."""
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))  # as images._decode_image: JPEGs decode at reduced scale
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image Pillow can read (JPEG, PNG, WebP, ...)") \
            from None
    except Image.DecompressionBombError as e:
        raise UploadError(400, f"{name}: decompression bomb: {e}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error...
        raise UploadError(400, f"{name}: corrupt image header ({e})") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise UploadError(413, f"{name}: {img.width}x{img.height} pixels is over the limit of "
                               f"{max_pixels / 1e6:g} megapixels per image (raise it with "
                               "easycls serve --max-megapixels)")
    return img


def decoded_pixels(name: str, data: bytes, size: int, max_pixels: int) -> int:
    """The pixels `decode_upload` will decode, read from the header alone.

    Raises:
        UploadError: 413 over `max_pixels`, 415 for a non-image, 400 for a bad header.
    """
    with _opened(name, data, size, max_pixels) as img:
        return img.width * img.height


def decode_upload(name: str, data: bytes, size: int, max_pixels: int) -> Image.Image:
    """An uploaded file as the model's input image, decoded exactly like `load_resized`.

    Raises:
        UploadError: 413 over `max_pixels` (checked on the header, before decoding), 415 for a
            non-image, 400 for a decompression bomb, truncated or corrupt file.
    """
    try:
        with _opened(name, data, size, max_pixels) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return Image.fromarray(square_rgb(img, size))
    except UploadError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error...
        what = "truncated" if "truncated" in str(e).lower() else f"corrupt ({e})"
        raise UploadError(400, f"{name}: {what} image") from None


class PixelBudget:
    """Decoded pixels in flight across all requests: a decode waits until its pixels fit.

    One image larger than the whole budget still runs, alone.
    """

    def __init__(self, limit: int):
        self.limit, self.used, self.peak = limit, 0, 0
        self._free = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        async with self._free:
            await self._free.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._free:
                self.used -= pixels
                self._free.notify_all()


async def decode_all(uploads: list[tuple[str, bytes]], size: int, max_pixels: int,
                     budget: PixelBudget) -> list[Image.Image]:
    """Every upload decoded, after checking each header against `max_pixels` and their sum
    against `REQUEST_IMAGES` times that; each decode holds its pixels in `budget`."""
    pixels = await run_in_threadpool(
        lambda: [decoded_pixels(n, d, size, max_pixels) for n, d in uploads])
    if sum(pixels) > REQUEST_IMAGES * max_pixels:
        raise UploadError(413, f"the {len(uploads)} images of this request decode to "
                               f"{sum(pixels) / 1e6:.1f} megapixels, over the limit of "
                               f"{REQUEST_IMAGES * max_pixels / 1e6:g} per request; send fewer "
                               "per request (or raise easycls serve --max-megapixels)")
    images = []
    for (name, data), n in zip(uploads, pixels):
        async with budget.hold(n):
            images.append(await run_in_threadpool(decode_upload, name, data, size, max_pixels))
    return images


def _too_large(max_bytes: int) -> UploadError:
    return UploadError(413, f"upload is over the limit of {max_bytes / 2**20:g} MB (raise it "
                            "with easycls serve --max-mb)")


async def _drain(stream: AsyncIterator[bytes], seen: int = 0) -> None:
    """Read the rest of a refused body (dropping it) up to DRAIN_BYTES, so that a client that
    sends the whole body before reading gets the answer."""
    async for chunk in stream:
        seen += len(chunk)
        if seen > DRAIN_BYTES:
            return


async def _capped(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > max_bytes:
            await _drain(stream, total)
            raise _too_large(max_bytes)
        yield chunk


async def read_files(request: Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """(filename, bytes) of each file in a multipart request, held in memory only."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(415, "send the images as multipart/form-data, field 'files'")
    if int(request.headers.get("content-length") or 0) > max_bytes:
        await _drain(request.stream())
        raise _too_large(max_bytes)
    parser = MultiPartParser(request.headers, _capped(request.stream(), max_bytes),
                             max_files=MAX_FILES, max_fields=MAX_FILES)
    parser.spool_max_size = max_bytes + 1  # spooled files stay in memory: nothing hits the disk
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise UploadError(400, f"bad multipart body: {e.message}") from None
    found = [(v.filename or f"file{i}", await v.read())
             for i, (_, v) in enumerate(form.multi_items()) if isinstance(v, UploadFile)]
    if not found:
        raise UploadError(400, "no files: send one or more images in the multipart field 'files'")
    return found


# ---------------------------------------------------------------- the app


# ---------------------------------------------------------------- the backend


def open_backend(path: str | Path, onnx: bool = False, device: str | None = None
                 ) -> Decider:
    """What to serve: an export folder (model.onnx, no model.json) or, with `onnx`, a run's
    `onnx/model.onnx` runs on onnxruntime, importing no torch; else the run's torch bundle.

    Raises:
        FileNotFoundError: `onnx` asked for, and the run has not been exported.
    """
    path = Path(path)
    folder = path if (path / "model.onnx").is_file() else path / "onnx"
    exported = (path / "model.onnx").is_file() and not (path / "model.json").is_file()
    if onnx or exported:
        if not (folder / "model.onnx").is_file():
            raise FileNotFoundError(f"{path} holds no onnx/model.onnx: export it first with "
                                    f"`easycls export {path}`, or serve it without --onnx")
        from .onnx_predictor import OnnxPredictor
        # Uploads decode on other threads while the model runs: onnxruntime's threads must
        # not spin-wait on the cores those need.
        return OnnxPredictor(folder / "model.onnx", spinning=False)
    from .bundle import load
    return load(path, device=device)


def _rows(predictor: Decider, names: list[str], probs: np.ndarray, top_k: int) -> list[dict]:
    rows = []
    for name, p, (label, prob) in zip(names, probs, predictor.decide(probs)):
        top = [{"label": predictor.classes[i], "probability": float(p[i])}
               for i in np.argsort(-p, kind="stable")[:top_k]]
        if predictor.multi_label:
            rows.append({"file": name, "labels": label, "probabilities": prob, "top": top})
        else:
            rows.append({"file": name, "label": label, "probability": prob, "top": top})
    return rows


def _model_info(run_dir: Path, predictor: Decider) -> dict:
    metrics = run_dir / "metrics.json"
    return {"name": run_dir.resolve().name, "model": predictor.meta,
            "thresholds": predictor.thresholds().tolist() if predictor.multi_label else None,
            "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None}


def create_app(run_dir: str | Path, *, predictor: Decider | None = None,
               onnx: bool = False, token: str | None = None, max_batch: int = 32,
               max_wait_ms: float = 5.0, max_mb: float = MAX_MB,
               max_megapixels: float = MAX_MEGAPIXELS, device: str | None = None) -> FastAPI:
    """The FastAPI app serving a run: `/` (page), `/predict`, `/model`, `/healthz`, `/docs`.

    Args:
        run_dir: the run directory written by `fit`, or a folder written by `easycls export`.
        predictor: an already loaded `Predictor` (e.g. `load(dir, model=...)` for a custom arch)
            or `OnnxPredictor`.
        onnx: serve the run's exported `onnx/model.onnx` on onnxruntime, without torch (an
            export folder is served so anyway); see `open_backend`.
        token: if given, `/predict` and `/model` need `Authorization: Bearer <token>`.
        max_batch, max_wait_ms: server-side batching (`max_batch=1` turns it off).
        max_mb: the largest request body; max_megapixels: the largest image, decoded (a
            request may bring `REQUEST_IMAGES` times that; decodes in flight hold at most
            that much at once).

    Example:
        >>> app = create_app("runs/digits-resnet18", token="s3cret")
    """
    run_dir = Path(run_dir)
    predictor = predictor or open_backend(run_dir, onnx=onnx, device=device)
    # The images arrive decoded and resized already: one worker just turns them into arrays.
    batcher = Batcher(lambda ims: predictor.probabilities(ims, bs=max(1, len(ims)), workers=1),
                      max_batch, max_wait_ms / 1000)
    max_bytes, max_pixels = int(max_mb * 2**20), int(max_megapixels * 1e6)
    budget = PixelBudget(max_pixels)
    info = _model_info(run_dir, predictor)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"easycls: {info['name']}", lifespan=lifespan,
                  description="Image classification with a model trained by easycls.")
    app.state.batcher, app.state.predictor, app.state.pixels = batcher, predictor, budget

    @app.exception_handler(UploadError)
    async def _refused(_request: Request, e: UploadError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"detail": e.reason}, status_code=e.status, headers=headers)

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise UploadError(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return (files(__package__) / "static" / "index.html").read_text()

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness, the runtime (torch or onnxruntime), and how many batches and images the
        server has run."""
        return {"status": "ok", "runtime": predictor.runtime, "batches": batcher.batches,
                "images": batcher.images}

    @app.get("/model")
    async def model(request: Request) -> dict:
        """model.json and metrics.json of the run."""
        authorize(request)
        return info

    @app.post("/predict", openapi_extra=_PREDICT_BODY)
    async def predict(request: Request, top_k: int = TOP_K) -> dict:
        """Label one or several images (multipart field `files`): label(s), probability, top-k."""
        authorize(request)
        uploads = await read_files(request, max_bytes)
        images = await decode_all(uploads, predictor.size, max_pixels, budget)
        probs = await batcher(images)
        return {"predictions": _rows(predictor, [n for n, _ in uploads], probs, max(1, top_k))}

    return app


_PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
}}}}}


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
          onnx: bool = False, token: str | None = None, max_batch: int = 32,
          max_wait_ms: float = 5.0, max_mb: float = MAX_MB,
          max_megapixels: float = MAX_MEGAPIXELS, say: Callable[[str], None] = print) -> None:
    """Serve a run until interrupted (see `create_app` for the options)."""
    import uvicorn
    app = create_app(run_dir, onnx=onnx, token=token, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, max_mb=max_mb, max_megapixels=max_megapixels)
    say(f"serving {run_dir} ({app.state.predictor.runtime}) on http://{host}:{port}/ "
        "(API docs at /docs; Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
