"""Convert a UI-format workflow (what ComfyUI's frontend saves) into the API format its
backend executes, as the frontend's `graphToPrompt` does.

- widget values are matched to the node class's widget inputs in INPUT_TYPES order
  (required, then optional), skipping the frontend-only "control after generate" value
  after seed-like widgets and the upload button's value after `image_upload` combos;
  `widgets_values` may also be a dict keyed by input name;
- links become `["origin_id", slot]`; a link that ends in a `PrimitiveNode` becomes the
  primitive's value; `Reroute` nodes (chains too) pass their input through;
- muted nodes (mode 2) are left out and links to them dropped, so a node that needs them
  fails validation; bypassed nodes (mode 4) pass each output through their first input of a
  matching type (the same slot index first); `Note` / `MarkdownNote` / groups are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import NodeDefinitionError, NodeProblem, WorkflowError
from .node_spec import InputSpec, NodeSpec
from .registry import NodeRegistry

MODE_NEVER = 2  # "muted"
MODE_BYPASS = 4
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote"})
VIRTUAL = FRONTEND_ONLY | {"Reroute", "PrimitiveNode"}
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_OPTIONS = ("image_upload",)


@dataclass(frozen=True)
class _Link:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


@dataclass(frozen=True)
class _Value:
    """A link that resolved to a constant (a PrimitiveNode's value)."""

    value: Any


def _parse_link(raw: Any) -> tuple[Any, _Link] | None:
    if isinstance(raw, (list, tuple)) and len(raw) >= 6:
        link_id, origin, origin_slot, target, target_slot, kind = raw[:6]
    elif isinstance(raw, dict) and "id" in raw:
        link_id, origin, origin_slot, target, target_slot, kind = (
            raw.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
        )
    else:
        return None
    return link_id, _Link(str(origin), int(origin_slot), str(target), int(target_slot), kind)


def _valid_connection(a: Any, b: Any) -> bool:
    """litegraph's isValidConnection: "*" / empty match anything, else comma lists intersect."""
    if not a or not b or a == "*" or b == "*":
        return True
    a_set = {t.strip() for t in str(a).lower().split(",")}
    b_set = {t.strip() for t in str(b).lower().split(",")}
    return bool(a_set & b_set)


def _is_control_value(value: Any) -> bool:
    return isinstance(value, bool) or value in CONTROL_VALUES


def frontend_default(spec: InputSpec) -> Any:
    """The value a new widget gets in the frontend: the declared default, else a combo's
    first choice, else 0 / "" / false (clamped up to a positive minimum)."""
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO":
        return spec.choices[0] if spec.choices else None
    if spec.type in ("INT", "FLOAT"):
        low = spec.options.get("min")
        return low if low is not None and low > 0 else 0
    return {"STRING": "", "BOOLEAN": False}.get(spec.type)


def widget_positions(values: list, spec: NodeSpec) -> dict[str, int]:
    """Where each widget input's value sits in a list `widgets_values`: the frontend stores them
    in INPUT_TYPES order, with a "control after generate" value after seed-like widgets (and a
    filter value after a combo's control) and the upload button's value after image uploads."""
    positions: dict[str, int] = {}
    i = 0
    for widget in spec.widget_inputs():
        if i >= len(values):
            break
        positions[widget.name] = i
        i += 1
        if widget.has_control_widget and i < len(values) and _is_control_value(values[i]):
            i += 1
            if widget.type == "COMBO" and i < len(values) and isinstance(values[i], str):
                i += 1  # a combo's control widget comes with a filter-list widget
        if any(widget.options.get(o) for o in UPLOAD_OPTIONS) and i < len(values) and values[i] == "image":
            i += 1
    return positions


def widget_values_by_name(node: dict, spec: NodeSpec) -> dict[str, Any]:
    """Map a UI node's `widgets_values` onto the class's widget inputs, by name; widgets the
    file has no value for get the frontend's default (the default graph's SaveImage has none)."""
    values = node.get("widgets_values")
    widgets = spec.widget_inputs()
    found: dict[str, Any] = {}
    if isinstance(values, dict):
        found = {w.name: values[w.name] for w in widgets if w.name in values}
    elif isinstance(values, list):
        found = {name: values[i] for name, i in widget_positions(values, spec).items()}
    for widget in widgets:
        if widget.name not in found:
            found[widget.name] = frontend_default(widget)
    return {name: found[name] for name in (w.name for w in widgets)}


def set_widget_value(node: dict, spec: NodeSpec, name: str, value: Any) -> bool:
    """Write `value` into a UI node's widget `name`; False when the node holds no such widget
    value (the input is fed by a link, or the file omits it)."""
    values = node.get("widgets_values")
    if isinstance(values, dict) and name in values:
        values[name] = value
        return True
    if isinstance(values, list) and name in widget_positions(values, spec):
        if any((item.get("name") == name and item.get("link") is not None) for item in node.get("inputs") or []):
            return False
        values[widget_positions(values, spec)[name]] = value
        return True
    return False


def _wrap(value: Any) -> Any:
    """The frontend boxes list values so they are not read as links."""
    return {"__value__": value} if isinstance(value, list) else value


class _Converter:
    def __init__(self, workflow: dict, registry: NodeRegistry):
        self.registry = registry
        self.problems: list[NodeProblem] = []
        self.nodes: dict[str, dict] = {}
        for node in workflow.get("nodes") or []:
            if isinstance(node, dict) and "id" in node:
                self.nodes[str(node["id"])] = node
        self.links: dict[Any, _Link] = {}
        for raw in workflow.get("links") or []:
            parsed = _parse_link(raw)
            if parsed is None:
                self.problems.append(NodeProblem(None, None, None, f"malformed link entry {raw!r}"))
            else:
                self.links[parsed[0]] = parsed[1]
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.subgraph_ids = {s.get("id") for s in subgraphs if isinstance(s, dict)}

    def problem(self, node: dict, input_name: str | None, message: str) -> None:
        self.problems.append(NodeProblem(str(node.get("id")), node.get("type"), input_name, message))

    # -- link resolution (the frontend's ExecutableNodeDTO.resolveInput / resolveOutput) --
    def resolve_input(self, node: dict, slot: int, visited: set, kind: Any = None):
        key = (str(node["id"]), "in", slot)
        if key in visited:
            raise _ResolutionCycle(node)
        visited.add(key)
        inputs = node.get("inputs") or []
        if slot >= len(inputs):
            return None
        link_id = inputs[slot].get("link")
        if link_id is None:
            return None
        link = self.links.get(link_id)
        if link is None:
            self.problem(node, inputs[slot].get("name"), f"link {link_id} is not in the workflow's links")
            return None
        origin = self.nodes.get(link.origin_id)
        if origin is None:
            self.problem(
                node, inputs[slot].get("name"), f"link {link_id} comes from node {link.origin_id}, which does not exist"
            )
            return None
        return self.resolve_output(
            origin, link.origin_slot, kind if kind is not None else inputs[slot].get("type"), visited
        )

    def resolve_output(self, node: dict, slot: int, kind: Any, visited: set):
        key = (str(node["id"]), "out", slot)
        if key in visited:
            raise _ResolutionCycle(node)
        visited.add(key)
        if node.get("mode") == MODE_BYPASS:
            index = self.bypass_input_index(node, slot, kind)
            return None if index < 0 else self.resolve_input(node, index, visited)
        if node.get("type") == "Reroute":
            return self.resolve_input(node, slot, visited, kind) if slot < len(node.get("inputs") or []) else None
        if node.get("type") == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return _Value(values[0]) if isinstance(values, list) and values else None
        if node.get("type") in FRONTEND_ONLY:
            return None
        return (str(node["id"]), slot)

    def bypass_input_index(self, node: dict, slot: int, kind: Any) -> int:
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if kind in ("*", "", None):
            return slot if len(inputs) > slot else 0
        if (
            slot < len(inputs)
            and _valid_connection(inputs[slot].get("type"), out_type)
            and _valid_connection(inputs[slot].get("type"), kind)
        ):
            return slot
        for i, item in enumerate(inputs):
            if item.get("type") == kind:
                return i
        for i, item in enumerate(inputs):
            if _valid_connection(item.get("type"), out_type) and _valid_connection(item.get("type"), kind):
                return i
        return -1

    # -- one node ---------------------------------------------------------------------------
    def convert_node(self, node: dict) -> dict:
        class_type = node.get("type")
        inputs: dict[str, Any] = {}
        if class_type in self.subgraph_ids:
            self.problem(
                node,
                None,
                "subgraph nodes are not supported by the headless harness; unpack the subgraph in ComfyUI first",
            )
        elif class_type in self.registry:
            try:
                spec = self.registry.spec(class_type)
            except NodeDefinitionError as error:
                self.problem(node, None, str(error))
            else:
                for name, value in widget_values_by_name(node, spec).items():
                    inputs[name] = _wrap(value)
        for slot, item in enumerate(node.get("inputs") or []):
            try:
                resolved = self.resolve_input(node, slot, set())
            except _ResolutionCycle as cycle:
                self.problem(
                    node, item.get("name"), f"links loop through node {cycle.node.get('id')} ({cycle.node.get('type')})"
                )
                continue
            if isinstance(resolved, _Value):
                inputs[item.get("name")] = _wrap(resolved.value)
            elif resolved is not None:
                inputs[item.get("name")] = [resolved[0], resolved[1]]
        default_title = self.registry.display_name(class_type) if class_type in self.registry else class_type
        title = node.get("title") or default_title
        return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}

    def convert(self) -> dict[str, dict]:
        output: dict[str, dict] = {}
        for node_id, node in self.nodes.items():
            if node.get("type") in VIRTUAL or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
                continue
            output[node_id] = self.convert_node(node)
        for entry in output.values():  # drop links to nodes that are not sent (muted ones)
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del entry["inputs"][name]
        if self.problems:
            raise WorkflowError(self.problems, title="UI workflow could not be converted")
        return output


class _ResolutionCycle(Exception):
    def __init__(self, node: dict):
        self.node = node


def convert_ui_to_api(workflow: dict, registry: NodeRegistry) -> dict[str, dict]:
    """The API-format prompt ComfyUI's frontend would send for the UI-format `workflow`.
    Nodes of unknown classes are kept (with their links only) so validation names them."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError(
            [NodeProblem(None, None, None, "a UI workflow needs a 'nodes' list")],
            title="UI workflow could not be converted",
        )
    return _Converter(workflow, registry).convert()
