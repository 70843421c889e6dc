"""Run an iterator ahead in a background thread, a bounded number of items ahead.

The loader's host work (gathering a batch from the cache, decoding JPEGs, pinning and
starting the copy to the GPU) then runs while the training step runs. Numpy copies,
image decoders and torch ops release the GIL, so a thread is enough; unlike worker
processes it costs no pickling and no inter-process copy of each batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

_T = TypeVar("_T")
_DONE = object()
_POLL = 0.05  # seconds between checks of the stop flag while the queue is full or empty


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[_T]):
    """Iterate `source` in a daemon thread, keeping up to `depth` items ready.

    Use it as a context manager (or call `close`): leaving early stops and joins the
    thread. An exception raised by `source` is raised again in the consuming thread.

    Example:
        >>> with Prefetcher(iter(range(5)), depth=2) as items:
        ...     list(items)
        [0, 1, 2, 3, 4]
    """

    def __init__(self, source: Iterable[_T], depth: int = 2, name: str = "easycls-prefetch"):
        self._source, self._queue = iter(source), queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001  handed to the consumer, raised there
            self._put(_Raised(e))

    def __iter__(self) -> Iterator[_T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes the item it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room so a blocked put sees the stop flag
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher[_T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
