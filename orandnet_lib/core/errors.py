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


class RunLocked(OrandnetError, RuntimeError):
    """Another live run is writing the same run folder."""
