"""Headless harness: run ComfyUI workflow graphs (API or UI format) without ComfyUI.

It knows ComfyUI's node-class convention, not any particular node: a registry of node
classes, UI->API conversion, validation, cached execution, progress and interruption, and
ComfyUI's model-folder layout. Pure Python (no torch, no diffusers, no ComfyUI).
"""

from ..runtime.interrupt import ExecutionInterrupted, Interrupted, request_interrupt, throw_if_interrupted
from ..runtime.model_paths import ModelPaths, get_model_paths, set_model_paths, use_model_paths
from ..runtime.progress import ProgressBar
from .errors import HarnessError, NodeExecutionError, NodeProblem, ValidationError, WorkflowError
from .executor import Executor, RunResult
from .registry import NodeRegistry, default_registry, load_node_file
from .runner import api_prompt, apply_overrides
from .ui_to_api import convert_ui_to_api
from .validation import validate_prompt
from .workflow_io import load_workflow

__all__ = [
    "Executor",
    "ExecutionInterrupted",
    "HarnessError",
    "Interrupted",
    "ModelPaths",
    "NodeExecutionError",
    "NodeProblem",
    "NodeRegistry",
    "ProgressBar",
    "RunResult",
    "ValidationError",
    "WorkflowError",
    "api_prompt",
    "apply_overrides",
    "convert_ui_to_api",
    "default_registry",
    "get_model_paths",
    "load_node_file",
    "load_workflow",
    "request_interrupt",
    "set_model_paths",
    "throw_if_interrupted",
    "use_model_paths",
    "validate_prompt",
]
