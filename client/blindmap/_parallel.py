"""Helpers for the CPU-bound parts of a sync: forked workers, and pausing the cyclic GC.

Normalizing a website and sealing a record are pure Python/C calls that hold the GIL, so
threads would not help; forked processes do. Fork (not spawn) because the workers need
the parent's state — the derived keys and the accounts read so far — and fork hands it
over as memory: nothing is pickled to a pipe but the work items and their results, and
no key ever leaves the process tree. Where fork is unavailable (Windows, macOS'
default) or only one CPU is usable, everything runs in the calling process.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Workers", "available_cpus", "gc_paused"]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

# The state of the running Workers, inherited by its forked children (set before fork).
_STATE: Any = None
_FN: Any = None


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a million small objects.

    Every few hundred allocations the collector walks the young objects, and every so
    often all of them: reading 1M CSV rows spent ~40% of its CPU there (measured). The
    loops it guards build tuples, strings and lists without reference cycles, so nothing
    is left for the collector to find; reference counting still frees everything.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            # What was built in the pause survives it (the rows just read or decrypted):
            # hand it to the oldest generation at once (freeze + unfreeze moves every
            # tracked object there, in O(1)) rather than have the next young collection
            # walk all of it, and the one after that again (measured: 2 us per decrypted
            # report row). Nothing is lost: the oldest generation is still collected.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _fork_ok() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _run(item: Any) -> Any:
    return _FN(_STATE, item)


class Workers(Generic[S, T, R]):
    """`fn(state, item)` over items, in order, on `jobs` forked processes.

    Use as a context manager; :meth:`map` keeps at most ``2 * jobs`` items in flight so
    the caller can produce items lazily (e.g. while parsing a file) and memory stays
    bounded. With ``jobs <= 1`` (or no fork) it is a plain in-process loop.
    """

    def __init__(self, fn: Callable[[S, T], R], state: S, jobs: int) -> None:
        self._fn = fn
        self._state = state
        self.jobs = jobs if jobs > 1 and _fork_ok() else 1
        self._pool: Any = None

    def __enter__(self) -> Workers[S, T, R]:
        global _STATE, _FN
        if self.jobs > 1:
            if _STATE is not None:
                raise RuntimeError("one Workers pool at a time")
            # kept while the pool lives: a worker that dies is replaced by a new fork
            _STATE, _FN = self._state, self._fn
            try:
                with warnings.catch_warnings():
                    # Python 3.12+ warns about fork in a threaded process (rich's progress
                    # thread): the children only run `fn` and are killed, never exit
                    # through interpreter shutdown, so no lock of another thread is waited on.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._pool = multiprocessing.get_context("fork").Pool(self.jobs)
            except BaseException:
                _STATE = _FN = None
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        global _STATE, _FN
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            _STATE = _FN = None

    def map(self, items: Iterable[T]) -> Iterator[R]:
        """Results of `fn(state, item)` in the order of `items`."""
        if self._pool is None:
            for item in items:
                yield self._fn(self._state, item)
            return
        pending: deque[Any] = deque()
        limit = 2 * self.jobs
        for item in items:
            pending.append(self._pool.apply_async(_run, (item,)))
            while len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
