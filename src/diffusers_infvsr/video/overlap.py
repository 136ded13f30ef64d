# Copyright 2026 The diffusers-infvsr authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Overlapping the stages of a job: an iterator that runs its source in a background thread, a bounded number of items
ahead. Decoding (PyAV), the model (torch) and encoding (PyAV, x264) release the GIL, so chained stages run at once."""

import queue
import threading
from collections.abc import Iterable, Iterator


_ITEM, _END, _ERROR = range(3)


class BackgroundIterator:
    r"""
    Iterates `source` in a thread named `name`, at most `max_ahead` items ahead of the consumer. An exception raised by
    `source` is raised again in the consumer, after the items before it. `close()` (or leaving the `with` block) stops
    the thread once its current item is done, closes `source` in it, and waits for it.

    Example:

    ```py
    >>> with BackgroundIterator(decode_frames("input.mp4"), max_ahead=24, name="decode") as frames:
    ...     for frame in frames:  # the next frames are decoded meanwhile
    ...         ...
    ```
    """

    def __init__(self, source: Iterable, max_ahead: int, name: str):
        self._queue: queue.Queue = queue.Queue(max_ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, entry: tuple) -> bool:
        """Wait for room in the queue, or for `close()`; return whether `entry` went in."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable) -> None:
        iterator = iter(source)
        try:
            for item in iterator:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put((_ERROR, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator:
        while True:
            kind, value = self._queue.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "BackgroundIterator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
