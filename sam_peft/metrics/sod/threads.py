"""Where the host engine's work runs: one torch thread, and our own threads over images.

Torch's intra-op parallel regions (OpenMP) stall whenever one of their threads is not scheduled, e.g. when
another process keeps a core busy, and a torch operator started from a new thread opens a team of its own. So
`SODMetrics.update` runs torch with one thread (`single_torch_thread`), and all the parallelism is in
`HostThreads`: a pool over images whose work calls numpy, scipy and the compiled transform only, which release
the GIL for their loops, and whose threads never wait for each other within an image. Every thread keeps its
work arrays (`Buffers`) from image to image: allocating large arrays in several threads at once is slow (every
new one is page-faulted in again, and every freed one flushes the other cores' address translations).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Runs the block with one torch intra-op thread in the calling thread, then restores the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else all of the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Buffers:
    """Work arrays of one thread: each name keeps one flat array, which grows (with some room) but is never
    reallocated for smaller images, so images of varied sizes reuse it."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised C-contiguous array of `shape` and `dtype` kept under `name`."""
        size = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.dtype != dtype or array.size < size:
            array = self._arrays[name] = np.empty(size + size // 4, dtype)
        return array[:size].reshape(shape)


class HostThreads:
    """A lazily started thread pool over images, sized by `num_threads`, else by the CPUs this process may use.

    Args:
        num_threads: threads to use; None: `available_cpus()` for work that is worth threads (see `map`).
    """

    def __init__(self, num_threads: int | None = None):
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be at least 1 (or None for every available CPU), got {num_threads}.")
        self.num_threads = num_threads
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0
        self._local = threading.local()

    def map(
        self, function: Callable[[Item, Buffers], Result], items: Sequence[Item], worth_threads: bool = True
    ) -> list[Result]:
        """`[function(item, buffers) for item in items]`, in threads when more than one is allowed and, unless
        `num_threads` was given, the items are `worth_threads`; `buffers` are the calling thread's. `function` must
        not call torch (see the module docstring)."""
        size = self.num_threads or (available_cpus() if worth_threads else 1)
        if min(size, len(items)) <= 1:
            return [function(item, self._buffers()) for item in items]
        if self._executor is None or self._size != size:
            self.close()
            self._executor, self._size = ThreadPoolExecutor(size, thread_name_prefix="sam-peft-metrics"), size
        return list(self._executor.map(lambda item: function(item, self._buffers()), items))

    def _buffers(self) -> Buffers:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = Buffers()
        return buffers

    def close(self) -> None:
        """Stops the threads and frees their work arrays (a later `map` starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor, self._size = None, 0
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"num_threads": self.num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["num_threads"])
