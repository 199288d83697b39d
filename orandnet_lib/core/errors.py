"""Errors a user can act on. Each message names the file or parameter and what to do."""

from __future__ import annotations


class OrandnetError(Exception):
    """Base class of every error this library raises on purpose."""


class DataError(OrandnetError, ValueError):
    """A dataset on disk is missing, malformed or inconsistent."""


class ConfigError(OrandnetError, ValueError):
    """A profile, stage or parameter is unknown or has the wrong type."""


class StageFailed(OrandnetError, RuntimeError):
    """A stage notebook raised; its executed copy holds the traceback."""


class RunInterrupted(OrandnetError, KeyboardInterrupt):
    """A run stopped by Ctrl-C, SIGINT or SIGTERM: the stage it was in is not marked complete."""

    def __init__(self, stage: str | None, finished: list[str]):
        self.stage, self.finished = stage, list(finished)
        where = f"during {stage} (not marked complete)" if stage else "between stages"
        done = ", ".join(finished) if finished else "none"
        super().__init__(f"interrupted {where}; finished in this run: {done}; run the same command again to "
                         "resume (finished stages are skipped)")


class RunLocked(OrandnetError, RuntimeError):
    """Another live run is writing the same run folder."""
