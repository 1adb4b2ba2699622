"""Host-neutral progress for node code (ComfyUI's `comfy.utils.ProgressBar` shape).

Nodes create `ProgressBar(total)` and call `update(n)` / `update_absolute(value)` per step.
Headless, with no hook installed, progress is shown by tqdm on stderr. A hook installed with
`use_progress_hook(fn)` receives `fn(node_id, value, total)` instead (tests and the ComfyUI
host use this). tqdm hides itself when stderr is not a terminal (logs stay clean). Every update also checks for an interrupt, as ComfyUI's hook does, so a
sampler loop stops cleanly at the next step.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from .interrupt import throw_if_interrupted

ProgressHook = Callable[[str | None, int, int], None]

_hook: contextvars.ContextVar[ProgressHook | None] = contextvars.ContextVar("progress_hook", default=None)
_current_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("progress_node", default=None)


@contextlib.contextmanager
def use_progress_hook(hook: ProgressHook | None) -> Iterator[None]:
    """Send progress of bars created inside the block to `hook(node_id, value, total)`."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)


@contextlib.contextmanager
def running_node(node_id: str | None) -> Iterator[None]:
    """Mark `node_id` as the node whose code runs inside the block (set by the executor)."""
    token = _current_node.set(node_id)
    try:
        yield
    finally:
        _current_node.reset(token)


def current_node_id() -> str | None:
    """The id of the node the executor is running now, or None outside a run."""
    return _current_node.get()


class ProgressBar:
    """Progress of one node's steps, reported to the installed hook or to tqdm."""

    def __init__(self, total: int, node_id: str | None = None):
        if int(total) < 0:
            raise ValueError(f"ProgressBar total must be >= 0, got {total}")
        self.total = int(total)
        self.current = 0
        self.node_id = node_id if node_id is not None else current_node_id()
        self._hook = _hook.get()
        self._tqdm = None

    def update_absolute(self, value: int, total: int | None = None) -> None:
        """Set progress to `value` (of `total`, when given, which also changes the total)."""
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total) if self.total else int(value)
        throw_if_interrupted()
        if self._hook is not None:
            self._hook(self.node_id, self.current, self.total)
        else:
            self._show()

    def update(self, n: int = 1) -> None:
        """Advance progress by `n` steps."""
        self.update_absolute(self.current + int(n))

    def _show(self) -> None:
        if self._tqdm is None:
            from tqdm import tqdm

            label = f"node {self.node_id}" if self.node_id is not None else None
            self._tqdm = tqdm(total=self.total, desc=label, leave=False, dynamic_ncols=True, disable=None)
        self._tqdm.total = self.total
        self._tqdm.n = self.current
        self._tqdm.refresh()
        if self.total and self.current >= self.total:
            self.close()

    def close(self) -> None:
        """Remove the tqdm bar (idempotent; nothing to do under a hook)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
