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


def test_the_status_line_shows_the_latest_bar_with_time_left_of_the_last_run(tmp_path):
    import io

    from orandnet_lib.book import status_line

    log = tmp_path / "progress.log"
    assert status_line.render("01_x", 62, 250, "") == "[01_x 1:02 elapsed, about 3:08 left of 4:10 last time]"
    assert status_line.render("01_x", 300, 250, "") == "[01_x 5:00 elapsed, 0:50 over the 4:10 of last time]"
    assert status_line.render("01_x", 3725, None, "step") == "[01_x 1:02:05 elapsed] step"
    log.write_text("training cnn:  10%|#   | 1/10 [00:01<00:09]\ntraining cnn:  20%|##  | 2/10 [00:02<00:08]\n\n")
    out = io.StringIO()  # not a terminal: whole lines, each only when it changed
    with status_line.StatusLine("01_x", log, None, out, interval=60) as line:
        line.show()
        line.show()
        with open(log, "a") as f:
            f.write("computing CAMs:  50%|#####| 5/10 [00:03<00:03]\n")
        line.show()
    shown = out.getvalue().splitlines()
    assert len(shown) == 2 and shown[0].endswith("training cnn:  20%|##  | 2/10 [00:02<00:08]")
    assert shown[1].startswith("[01_x 0:00 elapsed] computing CAMs:  50%")


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cleared_at_the_end(tmp_path):
    import io

    from orandnet_lib.book import status_line

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with status_line.StatusLine("02_y", tmp_path / "none.log", 10.0, out, interval=60) as line:
        line.show()
    assert out.getvalue().startswith("\r[02_y 0:00 elapsed, about 0:10 left of 0:10 last time]\x1b[K")
    assert out.getvalue().endswith("\r\x1b[K") and "\n" not in out.getvalue()
