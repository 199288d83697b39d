"""Same seed, same profile, same machine: the same numbers. Two full smoke runs in separate
folders (nothing shared: every model is trained twice) must give identical summaries, up to
the timings and memory figures."""

import pytest

from orandnet_lib.book.runner import Runner

from conftest import REPO

pytestmark = pytest.mark.slow
VOLATILE = ("time", "seconds", "_ms", "rss", "ms_per_image")


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k != "stages" and not any(t in k for t in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def test_two_smoke_runs_with_one_seed_give_identical_summaries(smoke_run, tmp_path):
    first, _ = smoke_run
    second = Runner("smoke", root=REPO, run_dir=tmp_path / "runs", book_dir=tmp_path / "book", progress=False,
                    log=lambda m: None).run()
    assert second.executed == first.executed
    a, b = _stable(first.summary), _stable(second.summary)
    assert set(a) == set(b)
    for key in a:
        assert a[key] == b[key], f"summary section {key!r} differs between two runs of one seed"
