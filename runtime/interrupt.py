"""Cooperative interruption, host-neutral (ComfyUI's `throw_exception_if_processing_interrupted`).

Long-running node code calls `throw_if_interrupted()` between steps; anyone (a signal
handler, another thread, a test) calls `request_interrupt()` to stop the run at the next
check. The executor turns this, and Ctrl-C (KeyboardInterrupt), into `ExecutionInterrupted`
naming the node that was running.
"""

from __future__ import annotations

import threading

from .errors import RunError

_requested = threading.Event()


class Interrupted(RunError):
    """Raised inside node code when an interrupt was requested."""


class ExecutionInterrupted(Interrupted):
    """A run was stopped while `node_id` was running; finished nodes stay cached."""

    def __init__(self, node_id: str | None, class_type: str | None, reason: str = "interrupted"):
        self.node_id, self.class_type = node_id, class_type
        where = f" while node {node_id} ({class_type}) was running" if node_id is not None else ""
        super().__init__(f"{reason}{where}")


def request_interrupt() -> None:
    """Ask the running workflow to stop at its next `throw_if_interrupted()` check."""
    _requested.set()


def clear_interrupt() -> None:
    """Forget a pending interrupt request (the executor does this when it handles one)."""
    _requested.clear()


def interrupt_requested() -> bool:
    """True when an interrupt was requested and not yet handled."""
    return _requested.is_set()


def throw_if_interrupted() -> None:
    """Raise `Interrupted` when an interrupt was requested; call it between steps."""
    if _requested.is_set():
        raise Interrupted("interrupt requested")
