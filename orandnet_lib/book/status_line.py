"""The runner's live status line: what a running stage is doing and how long it has left.

A stage's kernel writes its progress bars to the stage's ``progress.log``, one line per update
(``core.progress``). While the stage runs, a thread reads the last of those lines and shows it
with the stage's elapsed time and, when the folder holds a previous run of the stage, the time
that run took and what is left of it: redrawn in place on a terminal, one line every
``interval`` seconds (30 by default) when the output is a file or CI's log.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import IO


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def last_line(path: Path, window: int = 4096) -> str:
    """The last non-empty line of a log file ('' when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - window))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def render(stage: str, elapsed: float, expected: float | None, step: str) -> str:
    """One status line: ``[stage 1:02 elapsed, about 3:10 left of 4:12 last time] <the current bar>``."""
    head = f"[{stage} {_clock(elapsed)} elapsed"
    if expected:
        left = expected - elapsed
        head += (f", about {_clock(left)} left of {_clock(expected)} last time" if left > 0
                 else f", {_clock(-left)} over the {_clock(expected)} of last time")
    return head + "]" + (f" {step}" if step else "")


class StatusLine:
    """Shows :func:`render` for a running stage until :meth:`stop` (a context manager)."""

    def __init__(self, stage: str, log: Path, expected: float | None, stream: IO[str],
                 interval: float | None = None):
        self.stage, self.log, self.expected, self.stream = stage, Path(log), expected, stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if interval is not None else (0.5 if self.tty else 30.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"status {stage}")
        self._start = time.monotonic()
        self._shown = ""

    def __enter__(self) -> "StatusLine":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def line(self) -> str:
        return render(self.stage, time.monotonic() - self._start, self.expected, last_line(self.log))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.show()

    def show(self) -> None:
        text = self.line()
        try:
            if self.tty:
                width = shutil.get_terminal_size((120, 20)).columns
                self.stream.write("\r" + text[: width - 1] + "\x1b[K")
            elif text != self._shown:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the run goes on
            return
        self._shown = text

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self.tty and self._shown:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
