"""One run per run folder at a time: a lock file naming the process that holds it.

A second run into the folder fails at once, naming the holder and when it started; a lock whose
process is gone (a killed run, a rebooted machine) is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import RunLocked

LOCK_FILE = ".run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _age(path: Path) -> float | None:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def holder(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock of ``folder`` says (pid, host, started, command), or None when unlocked."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(info: dict[str, Any]) -> bool:
    """A lock of this machine whose process is gone. A lock of another host is never judged stale."""
    return info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1)))


@contextmanager
def locked(folder: str | os.PathLike[str], what: str = "orandnet run") -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block; refuse (:class:`RunLocked`) when a live run holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
          "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = holder(folder)
            age = _age(path)
            if info is None and age is not None and age < 5:  # being written this instant by its holder
                raise RunLocked(f"{folder} is being locked by another run this instant; try again")
            if info is not None and not is_stale(info):
                raise RunLocked(f"{folder} is being written by another run: process {info.get('pid')} on "
                                f"{info.get('host')} ({info.get('what', 'orandnet run')}), started "
                                f"{info.get('started')}; wait for it, stop it, or give another --run-dir") from None
            path.unlink(missing_ok=True)  # stale (or unreadable, half-written): take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise RunLocked(f"{folder}: could not take the lock {path}")
    try:
        yield path
    finally:
        if holder(folder) == me:
            path.unlink(missing_ok=True)
