"""Threads for the per-image CPU work of the metrics.

The feature transforms (compiled or scipy's), scipy's filters and numpy's loops over large arrays release the
GIL, so the images of a chunk can be processed in parallel threads. The work given to these threads must not
call torch: a torch operator started from a new thread opens its own intra-op thread team, and several of them
oversubscribe the cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


class HostThreads:
    """A lazily started thread pool sized by `num_threads`, else by torch's intra-op setting.

    Following `torch.get_num_threads()` by default means that `torch.set_num_threads(1)` (or
    `OMP_NUM_THREADS=1`) also makes the metrics single-threaded.

    Args:
        num_threads: threads to use; None follows `torch.get_num_threads()` at every call.
    """

    def __init__(self, num_threads: int | None = None):
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be at least 1 (or None for torch's setting), got {num_threads}.")
        self.num_threads = num_threads
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0

    def map(self, function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        """`[function(item) for item in items]`, in threads when more than one is allowed."""
        count = min(self.num_threads or torch.get_num_threads(), len(items))
        if count <= 1:
            return [function(item) for item in items]
        if self._executor is None or self._size < count:
            self.close()
            self._executor = ThreadPoolExecutor(count, thread_name_prefix="sam-peft-metrics")
            self._size = count
        return list(self._executor.map(function, items))

    def close(self) -> None:
        """Stops the threads (a later `map` starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor, self._size = None, 0

    def __getstate__(self) -> dict:
        return {"num_threads": self.num_threads, "_executor": None, "_size": 0}
