"""Progress bars: a widget in an interactive notebook, a text bar in a terminal.

Under the runner a notebook's kernel must not print its bars into the notebook (the book
would render hundreds of bar updates), so the runner sets ``ORANDNET_PROGRESS``:

- ``file:<path>``: text bars appended to that file (the stage's ``progress.log``, one line per
  update; the runner's status line shows the latest in the terminal);
- ``off``: no bars;
- unset: ``tqdm.auto`` (a widget in Jupyter, text in a terminal).
"""

from __future__ import annotations

import atexit
import os
import re
from typing import IO, Any

ENV_VAR = "ORANDNET_PROGRESS"
_streams: dict[str, IO[str]] = {}


class LineLog:
    """A log file that gets one line per bar update: tqdm redraws with carriage returns and
    pads with spaces, which a terminal overwrites but a file keeps as one long line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> int:
        for line in re.split(r"[\r\n]+", text):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def _stream(path: str) -> IO[str] | LineLog | None:
    if path not in _streams:
        try:
            f = open(path, "a", buffering=1)
        except OSError:
            return None
        _streams[path] = f if path.startswith("/dev/") else LineLog(f)  # type: ignore[assignment]
        atexit.register(_streams[path].close)
    return _streams[path]


def bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> Any:
    mode = os.environ.get(ENV_VAR, "")
    if mode == "off":
        disable = True
    if mode.startswith("file:"):
        from tqdm.std import tqdm

        stream = _stream(mode[len("file:"):])
        kwargs.setdefault("mininterval", 1.0)
        return tqdm(iterable, file=stream, disable=disable or stream is None, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm(iterable, disable=disable, **kwargs)
