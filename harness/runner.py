"""From a loaded workflow to an API prompt ready to run: UI conversion, `--set` overrides,
and the EXTRA_PNGINFO that SaveImage-like nodes embed."""

from __future__ import annotations

import copy
import json
from typing import Any

from .errors import HarnessError
from .registry import NodeRegistry
from .ui_to_api import convert_ui_to_api, set_widget_value
from .workflow_io import LoadedWorkflow


def api_prompt(loaded: LoadedWorkflow, registry: NodeRegistry) -> tuple[dict, dict | None]:
    """(API prompt, extra_pnginfo): a UI workflow is converted and travels along as
    `{"workflow": ...}` (what ComfyUI's frontend sends); an API prompt is copied as is."""
    if loaded.kind == "ui":
        return convert_ui_to_api(loaded.data, registry), {"workflow": loaded.data}
    return copy.deepcopy(loaded.data), None


def parse_assignment(text: str) -> tuple[str, str, str]:
    """Split `NODE.INPUT=VALUE` into its three parts."""
    target, sep, raw = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id.strip() or not name.strip():
        raise HarnessError(f"--set {text!r}: expected NODE.INPUT=VALUE, e.g. --set 3.seed=42")
    return node_id.strip(), name.strip(), raw


def _parse_value(raw: str, input_type: str | None, choices: tuple | None) -> Any:
    """JSON when possible, but text stays text for STRING inputs and combo choices."""
    if input_type == "STRING" or (choices and raw in choices):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_overrides(
    prompt: dict, assignments: list[str], registry: NodeRegistry, extra_pnginfo: dict | None = None
) -> None:
    """Apply `--set NODE.INPUT=VALUE` assignments to an API prompt, in place. The UI workflow in
    `extra_pnginfo` (what saved PNGs embed) gets the same values, so an image dragged back into
    ComfyUI shows the settings it was made with; where a value cannot be written there (the
    input is fed by a link), the stale UI workflow is dropped and the PNG keeps the API prompt."""
    workflow = (extra_pnginfo or {}).get("workflow")
    ui_nodes = {str(n.get("id")): n for n in (workflow or {}).get("nodes", []) if isinstance(n, dict)}
    for text in assignments:
        node_id, name, raw = parse_assignment(text)
        node = prompt.get(node_id)
        if node is None:
            raise HarnessError(
                f"--set {text!r}: no node {node_id} in the workflow (ids: {', '.join(sorted(prompt, key=str))})"
            )
        class_type = node.get("class_type")
        input_type, choices = None, None
        if class_type in registry:
            spec = registry.spec(class_type)
            settable = [n for n, s in spec.inputs.items() if s.category != "hidden"]
            if name not in settable:
                raise HarnessError(
                    f"--set {text!r}: node {node_id} ({class_type}) has no input {name!r}; inputs: {', '.join(settable)}"
                )
            input_type, choices = spec.inputs[name].type, spec.inputs[name].choices
        value = _parse_value(raw, input_type, choices)
        node.setdefault("inputs", {})[name] = value
        if workflow is not None:
            ui_node = ui_nodes.get(node_id)
            if (
                ui_node is None
                or class_type not in registry
                or not set_widget_value(ui_node, registry.spec(class_type), name, value)
            ):
                extra_pnginfo.pop("workflow", None)
                workflow, ui_nodes = None, {}
