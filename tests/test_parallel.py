"""core.parallel.imap: results in input order, and workers that end when the pool ends them."""

from __future__ import annotations

import os
import signal

import pytest

from orandnet_lib.core.parallel import imap


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _dispositions(_: int) -> tuple[bool, bool]:
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers only")
def test_imap_keeps_the_input_order_over_two_workers_and_runs_in_process_with_one():
    out = list(imap(_square_and_pid, range(40), workers=2, chunksize=3))
    assert [v for v, _ in out] == [x * x for x in range(40)]
    assert os.getpid() not in {pid for _, pid in out}
    assert {pid for _, pid in imap(_square_and_pid, range(5), workers=1)} == {os.getpid()}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers only")
def test_a_worker_ends_on_sigterm_whatever_its_parent_does_with_it():
    """A stage run in process forks its workers from the runner, which turns SIGTERM into
    KeyboardInterrupt; a worker that inherited that handler could sit in a lock through the pool's
    terminate. Workers take the default SIGTERM (and leave Ctrl-C to the parent)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a parent that swallows SIGTERM
    try:
        assert set(imap(_dispositions, range(6), workers=2, chunksize=1)) == {(True, True)}
    finally:
        signal.signal(signal.SIGTERM, previous)
