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


def _blocked_now(_: int) -> bool:
    return signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers only")
def test_a_worker_holds_sigterm_until_its_own_handler_is_set(monkeypatch, tmp_path):
    """No window between the fork and the initializer in which a SIGTERM meets the parent's handler
    (Python drops a signal whose handler changed before it ran it, and the worker then outlived the pool)."""
    from orandnet_lib.core import parallel

    real = parallel._worker_signals

    def recording() -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        (tmp_path / str(os.getpid())).write_text(str(signal.SIGTERM in blocked and signal.SIGINT in blocked))
        real()

    monkeypatch.setattr(parallel, "_worker_signals", recording)
    assert set(imap(_blocked_now, range(4), workers=2, chunksize=1)) == {False}  # unblocked once it runs
    starts = [p.read_text() for p in tmp_path.iterdir()]
    assert starts and set(starts) == {"True"}, "a worker started with SIGTERM deliverable to its parent's handler"
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, []), "the parent's mask is restored"
