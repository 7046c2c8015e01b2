"""Errors in what the user gave: a config, a data file, a seed image, a checkpoint, a cluster.

`art-train` and `art-eval` print the message of a `UserError` as one short line, without a
traceback, and exit with status 2; anything else is a bug and keeps its traceback. Every
message names the input and says what to do.
"""

from __future__ import annotations


class UserError(ValueError):
    """An unusable input; the message names it and says what to do."""


class DataFileError(UserError, FileNotFoundError):
    """A dataset file or folder that is missing or unreadable."""


class DataAccessError(UserError, PermissionError):
    """A dataset or model the hub will not give (gated, unreachable)."""


class RunStoppedError(RuntimeError):
    """A run that stopped on purpose or lost a process, with its outputs saved; the message
    says what happened and how to resume. The CLI prints it without a traceback (status 1)."""


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM (Kubernetes, Slurm, `ray job stop`): handled as an interrupt
    (the last good step is saved), and the command exits with status 143 (128 + 15)."""
