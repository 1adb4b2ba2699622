"""The base of every error raised on purpose while a graph or a command runs (the harness's
errors, an interruption, a model file that is not there): callers catch `RunError` to tell a
user's problem from a bug."""

from __future__ import annotations


class RunError(Exception):
    """An error with a message a user can act on (not a bug)."""
