"""Order-preserving map over forked worker processes, for per-image CPU work that holds
the GIL or runs single-threaded C++ (the dense CRF): two cores give close to twice the speed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """``ORANDNET_WORKERS`` if set, else the CPUs this process may use."""
    env = os.environ.get("ORANDNET_WORKERS", "")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def imap(fn: Callable[[T], R], items: Iterable[T], workers: int = 0, chunksize: int = 8) -> Iterator[R]:
    """``fn`` over ``items``, results in input order. ``workers`` 0: one per CPU; 1: in this
    process (no fork). ``fn`` must be a module-level function (or a partial of one)."""
    workers = workers or default_workers()
    if workers <= 1 or not hasattr(os, "fork"):
        yield from map(fn, items)
        return
    with _held(WORKER_SIGNALS):  # the workers are forked with these blocked, until their initializer
        pool = mp.get_context("fork").Pool(workers, initializer=_worker_signals)
    with pool:
        yield from pool.imap(fn, items, chunksize)


WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def _held(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Block ``signals`` in this thread (and so in the processes and threads it starts) for the
    block's duration; one that arrives meanwhile is delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_signals() -> None:
    """A worker ends on SIGTERM (the pool's terminate) whatever handler its parent had installed
    (the runner turns SIGTERM into KeyboardInterrupt, and a stage run in process forks from there),
    and leaves Ctrl-C to the parent, which stops the pool. The worker starts with both blocked, so
    none arrives while it still has its parent's handler: a SIGTERM caught there and handled after
    this swap is dropped by Python ("ignored due to race condition"), and the worker then waited on
    the pool's queue lock forever while the pool's terminate waited for it to exit (seen once in
    make test). Unblocked here, a pending SIGTERM ends the worker at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
