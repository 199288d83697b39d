"""Progress bars: a widget in an interactive notebook, a text bar in a terminal.

Under the runner, a notebook's kernel writes its bars as text to the runner's terminal
(the kernel inherits its stderr), so executed notebooks, and the book, hold no progress
widgets. ``ORANDNET_PROGRESS`` = ``terminal`` | ``off`` | unset (tqdm.auto) selects this.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV_VAR = "ORANDNET_PROGRESS"


def bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> Any:
    mode = os.environ.get(ENV_VAR, "")
    if mode == "off":
        disable = True
    if mode == "terminal":
        from tqdm.std import tqdm

        return tqdm(iterable, file=sys.__stderr__, disable=disable, dynamic_ncols=True, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm(iterable, disable=disable, **kwargs)
