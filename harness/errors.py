"""Exceptions of the harness: every one names the node (id and class) and, where it applies,
the input, so a user can find the problem in the workflow."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import RunError


@dataclass(frozen=True)
class NodeProblem:
    """One problem found in a workflow: where (node id, class, input) and what."""

    node_id: str | None
    class_type: str | None
    input_name: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else ""))
        if self.input_name is not None:
            where.append(f"input {self.input_name!r}")
        return (", ".join(where) + ": " if where else "") + self.message


class HarnessError(RunError):
    """Base class of every error the harness raises on purpose (interruption and model-folder errors
    come from the runtime: catch `RunError` for all of them)."""


class WorkflowError(HarnessError):
    """A workflow that cannot be run: carries ALL problems found, not just the first."""

    def __init__(self, problems: list[NodeProblem], title: str = "workflow is invalid"):
        self.problems = list(problems)
        self.title = title
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.title} ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def one_line(self) -> str:
        """All problems on one line, for the command line's error message."""
        return f"{self.title}: " + "; ".join(str(p) for p in self.problems)


class ValidationError(WorkflowError):
    """The API prompt failed validation (what ComfyUI reports as `node_errors`)."""

    def __init__(self, problems: list[NodeProblem]):
        super().__init__(problems, title="workflow failed validation")


class WorkflowFormatError(HarnessError):
    """A file that is not a workflow we can read (bad JSON, no metadata in a PNG, ...)."""


class NodeDefinitionError(HarnessError):
    """A node class that does not follow ComfyUI's node-class convention."""


class NodeExecutionError(HarnessError):
    """A node raised while running; the original exception is chained as `__cause__`."""

    def __init__(self, node_id: str, class_type: str, error: BaseException):
        self.node_id, self.class_type, self.error = node_id, class_type, error
        super().__init__(f"node {node_id} ({class_type}) failed: {type(error).__name__}: {error}")
