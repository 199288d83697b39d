"""Progress bars: a widget in an interactive notebook, a text bar in a terminal.

Under the runner a notebook's kernel must not print its bars into the notebook (the book
would render hundreds of bar updates), so the runner sets ``ORANDNET_PROGRESS``:

- ``file:<path>``: text bars appended to that file: the runner's terminal (``/dev/tty...``)
  when it has one, else the stage's ``progress.log``;
- ``off``: no bars;
- unset: ``tqdm.auto`` (a widget in Jupyter, text in a terminal).
"""

from __future__ import annotations

import atexit
import os
from typing import IO, Any

ENV_VAR = "ORANDNET_PROGRESS"
_streams: dict[str, IO[str]] = {}


def _stream(path: str) -> IO[str] | None:
    if path not in _streams:
        try:
            _streams[path] = open(path, "a", buffering=1)
            atexit.register(_streams[path].close)
        except OSError:
            return None
    return _streams[path]


def bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> Any:
    mode = os.environ.get(ENV_VAR, "")
    if mode == "off":
        disable = True
    if mode.startswith("file:"):
        from tqdm.std import tqdm

        stream = _stream(mode[len("file:"):])
        return tqdm(iterable, file=stream, disable=disable or stream is None, mininterval=1.0, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm(iterable, disable=disable, **kwargs)
