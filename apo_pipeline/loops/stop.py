"""`RunStopped`: a run that stops on purpose (no Ray import, so the launcher can catch it cheaply)."""

from __future__ import annotations


class RunStopped(RuntimeError):
    """The run stops on purpose (no restore helps); `str()` is the one line the job prints."""
