"""Run a validated prompt: nodes in dependency order, only those that lead to an output
node, with ComfyUI's list mapping, hidden inputs and output caching.

Caching: each node gets a signature from its class, its constant inputs, its IS_CHANGED
result and, recursively, the signatures of the nodes it reads from. Outputs are cached by
signature between runs of the same Executor, so a second run that only changes the seed
re-runs the sampler and what follows, not the model loader. An interrupt or Ctrl-C stops the
run with `ExecutionInterrupted` naming the running node; finished nodes stay cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..runtime.interrupt import ExecutionInterrupted, Interrupted, clear_interrupt, throw_if_interrupted
from ..runtime.model_paths import ModelPaths, use_model_paths
from ..runtime.progress import ProgressHook, running_node, use_progress_hook
from .errors import NodeExecutionError
from .node_spec import NodeSpec
from .registry import NodeRegistry
from .validation import ValidatedPrompt, validate_prompt


@dataclass
class NodeResult:
    """What one node produced: one list of values per output slot, and its "ui" dict."""

    outputs: tuple[list, ...]
    ui: dict | None = None


@dataclass
class RunResult:
    """The outcome of a run: results by node id, and which nodes ran or came from the cache."""

    results: dict[str, NodeResult] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)

    def output(self, node_id: str, slot: int = 0) -> list:
        """The values (a list, one per list item / call) of output `slot` of `node_id`."""
        return self.results[str(node_id)].outputs[slot]

    @property
    def ui(self) -> dict[str, dict]:
        """The "ui" dicts of the nodes that returned one (saved images and the like)."""
        return {i: r.ui for i, r in self.results.items() if r.ui}


def _call_args(function: Any, available: dict) -> dict:
    """The entries of `available` that `function` accepts."""
    params = inspect.signature(function).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return dict(available)
    names = {p.name for p in params}
    return {k: v for k, v in available.items() if k in names}


def _merge_ui(parts: list[dict]) -> dict | None:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged or None


class Executor:
    """Runs prompts for one registry, keeping node outputs cached between runs."""

    def __init__(self, registry: NodeRegistry, model_paths: ModelPaths | None = None):
        self.registry = registry
        self.model_paths = model_paths
        self._cache: dict[str, NodeResult] = {}
        self._instances: dict[tuple[str, str], Any] = {}

    def clear_cache(self) -> None:
        """Forget every cached output and node instance."""
        self._cache.clear()
        self._instances.clear()

    @property
    def cache_size(self) -> int:
        """How many node results are cached."""
        return len(self._cache)

    def run(
        self,
        prompt: dict,
        *,
        extra_pnginfo: dict | None = None,
        progress_hook: ProgressHook | None = None,
        rerun_outputs: bool = False,
    ) -> RunResult:
        """Validate `prompt` (API format) and run it. `extra_pnginfo` is what SaveImage-like
        nodes receive as EXTRA_PNGINFO ({"workflow": ui_workflow} when run from a UI file).
        `rerun_outputs`: output nodes run even when cached (a batch job must write its own files)."""
        with use_model_paths(self.model_paths) if self.model_paths is not None else contextlib.nullcontext():
            validated = validate_prompt(prompt, self.registry)
            return self.run_validated(
                validated, prompt, extra_pnginfo=extra_pnginfo, progress_hook=progress_hook, rerun_outputs=rerun_outputs
            )

    def run_validated(
        self,
        validated: ValidatedPrompt,
        prompt: dict,
        *,
        extra_pnginfo: dict | None = None,
        progress_hook: ProgressHook | None = None,
        rerun_outputs: bool = False,
    ) -> RunResult:
        """Run an already validated prompt (`prompt` is what nodes receive as PROMPT)."""
        clear_interrupt()
        result = RunResult()
        signatures: dict[str, str] = {}
        with contextlib.ExitStack() as stack:
            if self.model_paths is not None:
                stack.enter_context(use_model_paths(self.model_paths))
            if progress_hook is not None:
                stack.enter_context(use_progress_hook(progress_hook))
            for node_id in validated.order:
                spec = validated.specs[node_id]
                node = validated.prompt[node_id]
                try:
                    signature = self._signature(node_id, node, spec, signatures)
                    signatures[node_id] = signature
                    cached = None if rerun_outputs and spec.is_output else self._cache.get(signature)
                    if cached is not None:
                        result.results[node_id] = cached
                        result.cached.append(node_id)
                        continue
                    throw_if_interrupted()
                    with running_node(node_id):
                        node_result = self._execute(node_id, node, spec, result.results, prompt, extra_pnginfo)
                except (KeyboardInterrupt, Interrupted) as error:
                    clear_interrupt()
                    reason = "stopped by Ctrl-C" if isinstance(error, KeyboardInterrupt) else "interrupted"
                    raise ExecutionInterrupted(node_id, spec.class_type, reason) from error
                self._cache[signature] = node_result
                result.results[node_id] = node_result
                result.executed.append(node_id)
        keep = set(signatures.values())
        for signature in [s for s in self._cache if s not in keep]:
            del self._cache[signature]
        return result

    # -- signatures -------------------------------------------------------------------------
    def _signature(self, node_id: str, node: dict, spec: NodeSpec, signatures: dict[str, str]) -> str:
        parts: list[Any] = [spec.class_type, self._is_changed(node_id, node, spec)]
        for name in sorted(node["inputs"]):
            if name not in spec.inputs:
                continue
            value = node["inputs"][name]
            if isinstance(value, tuple):
                parts.append([name, "link", signatures[value[0]], value[1]])
            else:
                parts.append([name, "value", value])
        hidden = {s.type for s in spec.inputs.values() if s.category == "hidden"}
        if getattr(spec.cls, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in hidden:
            parts.append(["node", node_id])
        text = json.dumps(parts, sort_keys=True, default=repr)
        return hashlib.sha1(text.encode()).hexdigest()

    def _is_changed(self, node_id: str, node: dict, spec: NodeSpec) -> Any:
        """IS_CHANGED's answer for the node's constant inputs (NaN: always re-run)."""
        is_changed = getattr(spec.cls, "IS_CHANGED", None)
        if is_changed is None:
            return None
        constants = {k: v for k, v in node["inputs"].items() if not isinstance(v, tuple) and k in spec.inputs}
        try:
            with running_node(node_id):
                answer = is_changed(**_call_args(is_changed, constants))
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as error:
            raise NodeExecutionError(node_id, spec.class_type, error) from error
        if isinstance(answer, float) and math.isnan(answer):
            return uuid.uuid4().hex
        return repr(answer)

    # -- running one node -------------------------------------------------------------------
    def _input_lists(
        self,
        node_id: str,
        node: dict,
        spec: NodeSpec,
        done: dict[str, NodeResult],
        prompt: dict,
        extra_pnginfo: dict | None,
    ) -> dict[str, list]:
        lists: dict[str, list] = {}
        for name, value in node["inputs"].items():
            if name not in spec.inputs:
                continue
            lists[name] = done[value[0]].outputs[value[1]] if isinstance(value, tuple) else [value]
        hidden_values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo, "UNIQUE_ID": node_id}
        for name, input_spec in spec.inputs.items():
            if input_spec.category == "hidden":
                lists[name] = [hidden_values.get(input_spec.type)]
        return lists

    def _execute(
        self,
        node_id: str,
        node: dict,
        spec: NodeSpec,
        done: dict[str, NodeResult],
        prompt: dict,
        extra_pnginfo: dict | None,
    ) -> NodeResult:
        lists = self._input_lists(node_id, node, spec, done, prompt, extra_pnginfo)
        if spec.input_is_list:
            calls = [lists]
        elif any(len(v) == 0 for v in lists.values()):
            calls = []  # mapping over an empty list: nothing to do
        else:
            count = max((len(v) for v in lists.values()), default=1)
            calls = [{k: v[i] if i < len(v) else v[-1] for k, v in lists.items()} for i in range(count)]
        key = (node_id, spec.class_type)
        try:
            instance = self._instances.get(key)
            if instance is None:
                instance = self._instances[key] = spec.cls()
            function = getattr(instance, spec.function)
            returned = []
            for kwargs in calls:
                throw_if_interrupted()
                returned.append(function(**kwargs))
            return self._collect(node_id, spec, returned)
        except (KeyboardInterrupt, Interrupted, NodeExecutionError):
            raise
        except Exception as error:
            raise NodeExecutionError(node_id, spec.class_type, error) from error

    def _collect(self, node_id: str, spec: NodeSpec, returned: list) -> NodeResult:
        """Merge the per-call returns into one list per output slot (ComfyUI's rule:
        OUTPUT_IS_LIST outputs are concatenated, others collected one item per call)."""
        results, uis = [], []
        n_outputs = len(spec.return_types)
        for value in returned:
            if isinstance(value, dict):
                if "expand" in value:
                    raise ValueError("returned an 'expand' graph, which the headless harness does not support")
                if value.get("ui") is not None:
                    uis.append(value["ui"])
                value = value.get("result", () if n_outputs == 0 else None)
            if value is None and n_outputs == 0:
                value = ()
            if not isinstance(value, (tuple, list)) or len(value) != n_outputs:
                raise TypeError(
                    f"{spec.class_type}.{spec.function} returned {type(value).__name__} {str(value)[:80]}; "
                    f"expected a tuple of {n_outputs} value(s) for RETURN_TYPES {spec.return_types}"
                )
            results.append(value)
        outputs = []
        for slot in range(n_outputs):
            if spec.output_is_list[slot]:
                outputs.append([item for r in results for item in r[slot]])
            else:
                outputs.append([r[slot] for r in results])
        return NodeResult(tuple(outputs), _merge_ui(uis))
