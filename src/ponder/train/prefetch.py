"""Generate the next batches in a background thread while the model trains on this one.

Examples are pure functions of their index (no global RNG), so prefetching changes nothing
but the wall-clock: the batches and their order are exactly those of the plain iterator.
Torch releases the GIL inside its kernels, so Python-side generation overlaps with them.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_END = object()


class Prefetcher(Iterator[T]):
    """Wrap ``source``; keep up to ``depth`` items ready. Call :meth:`close` when done."""

    def __init__(self, source: Iterator[T], *, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True)
        self._thread.start()

    def _fill(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                while not self._stop.is_set():
                    try:
                        self._queue.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._queue.put((False, exc))

    def __next__(self) -> T:
        ok, item = self._queue.get()
        if not ok:
            raise item
        if item is _END:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=1.0)
