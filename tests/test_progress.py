"""Progress bars written to a log file: one line per update."""

from orandnet_lib.core import progress


def test_progress_log_has_one_line_per_update(tmp_path, monkeypatch):
    log = tmp_path / "progress.log"
    monkeypatch.setenv(progress.ENV_VAR, f"file:{log}")
    for _ in progress.bar(range(3), desc="counting", mininterval=0):
        pass
    progress._streams.pop(str(log)).close()
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text()
    assert [line.split("|")[0].split()[-1] for line in lines][:4] == ["0%", "33%", "67%", "100%"]
    assert all(line == line.rstrip() and line for line in lines)
