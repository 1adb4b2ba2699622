"""Check an API-format prompt before anything runs, as ComfyUI's `validate_prompt` does, but
report every problem at once: unknown classes, missing required inputs, bad links (missing
node, output index, type mismatch), values of the wrong type, out of min/max or not in a
combo's list, `VALIDATE_INPUTS` refusals, cycles, and a prompt without an output node.
Only nodes that lead to an output node are checked (ComfyUI ignores the others)."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from .errors import NodeDefinitionError, NodeProblem, ValidationError
from .node_spec import InputSpec, NodeSpec
from .registry import NodeRegistry


@dataclass
class ValidatedPrompt:
    """A prompt that passed validation: values converted, links as `(origin_id, slot)`."""

    prompt: dict[str, dict]  # id -> {"class_type", "inputs"} with normalised inputs
    specs: dict[str, NodeSpec]
    order: list[str]  # nodes needed by the outputs, each after the nodes it reads from
    output_ids: list[str]


def is_link(value: Any) -> bool:
    """An input value that refers to another node's output (`["id", slot]`)."""
    return isinstance(value, (list, tuple))


def unwrap(value: Any) -> Any:
    """Undo the frontend's `{"__value__": [...]}` boxing of list-valued widgets."""
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def types_match(received: Any, expected: str) -> bool:
    """ComfyUI's link type rule: "*" matches anything, comma lists must share a type,
    and a combo input takes a combo (list) output."""
    if isinstance(received, (list, tuple)):
        return expected in ("COMBO", "*")
    if received == expected or received == "*" or expected == "*":
        return True
    if expected == "COMBO" and received == "COMBO":
        return True
    got = {t.strip() for t in str(received).split(",")}
    want = {t.strip() for t in str(expected).split(",")}
    return bool(got & want) or "*" in want


def _type_name(kind: Any) -> str:
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def convert_value(spec: InputSpec, value: Any) -> tuple[Any, str | None]:
    """(converted value, None) or (value, error message) for a constant given to `spec`."""
    kind = spec.type
    if isinstance(value, dict):
        return value, f"expected a {kind} value, got a dict {value!r}"
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return value, f"expected an integer, got {type(value).__name__} {value!r}"
        try:
            number = float(value) if not isinstance(value, int) else value
        except ValueError:
            return value, f"expected an integer, got {value!r}"
        if isinstance(number, float):
            if not number.is_integer():
                return value, f"expected an integer, got {value!r}"
            number = int(number)
        value = number
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return value, f"expected a number, got {type(value).__name__} {value!r}"
        try:
            value = float(value)
        except ValueError:
            return value, f"expected a number, got {value!r}"
        if math.isnan(value):
            return value, "expected a number, got NaN"
    elif kind == "STRING":
        if not isinstance(value, str):
            return value, f"expected a string, got {type(value).__name__} {value!r}"
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            return value, f"expected true or false, got {type(value).__name__} {value!r}"
    elif kind == "COMBO":
        choices = spec.choices or ()
        try:
            allowed = value in choices
        except TypeError:
            allowed = False
        if not allowed:
            shown = ", ".join(repr(c) for c in choices[:20]) + (" ..." if len(choices) > 20 else "")
            return value, f"value {value!r} is not in the list: [{shown}]"
    elif kind != "*":
        return value, f"expects a link from a node output of type {kind}, got the constant {value!r}"
    if kind in ("INT", "FLOAT"):
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            return value, f"value {value} is smaller than the minimum {low}"
        if high is not None and value > high:
            return value, f"value {value} is bigger than the maximum {high}"
    return value, None


class _Validator:
    def __init__(self, prompt: Any, registry: NodeRegistry):
        self.registry = registry
        self.problems: list[NodeProblem] = []
        self.prompt: dict[str, dict] = {}
        self.specs: dict[str, NodeSpec] = {}
        if not isinstance(prompt, dict) or not prompt:
            self.add(None, None, None, "the prompt must be a non-empty dict {node_id: {class_type, inputs}}")
            return
        for raw_id, node in prompt.items():
            node_id = str(raw_id)
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                self.add(node_id, None, None, "node entry needs a 'class_type' string")
                continue
            inputs = node.get("inputs", {})
            if not isinstance(inputs, dict):
                self.add(node_id, node["class_type"], None, "'inputs' must be a dict")
                inputs = {}
            self.prompt[node_id] = {"class_type": node["class_type"], "inputs": dict(inputs)}

    def add(self, node_id: str | None, class_type: str | None, input_name: str | None, message: str) -> None:
        self.problems.append(NodeProblem(node_id, class_type, input_name, message))

    def load_specs(self) -> None:
        for node_id, node in self.prompt.items():
            class_type = node["class_type"]
            if class_type not in self.registry:
                close = difflib.get_close_matches(class_type, self.registry.names(), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                self.add(node_id, class_type, None, f"unknown node class {class_type!r} (not registered){hint}")
                continue
            try:
                self.specs[node_id] = self.registry.spec(class_type)
            except NodeDefinitionError as error:
                self.add(node_id, class_type, None, str(error))

    def needed_nodes(self, output_ids: list[str]) -> list[str]:
        seen: list[str] = []
        stack = list(reversed(output_ids))
        marked = set()
        while stack:
            node_id = stack.pop()
            if node_id in marked:
                continue
            marked.add(node_id)
            seen.append(node_id)
            for value in self.prompt[node_id]["inputs"].values():
                if is_link(value) and len(value) == 2 and str(value[0]) in self.prompt:
                    stack.append(str(value[0]))
        return seen

    def check_link(self, node_id: str, class_type: str, name: str, spec: InputSpec, value: Any):
        if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
            self.add(node_id, class_type, name, f"bad link {value!r}: expected [node_id, output_index]")
            return None
        source_id, slot = str(value[0]), value[1]
        if source_id not in self.prompt:
            self.add(node_id, class_type, name, f"linked to node {source_id}, which is not in the workflow")
            return None
        source_spec = self.specs.get(source_id)
        if source_spec is None:
            return None  # its own problem is reported already
        outputs = source_spec.return_types
        if not 0 <= slot < len(outputs):
            self.add(
                node_id,
                class_type,
                name,
                f"linked to output {slot} of node {source_id} ({source_spec.class_type}), which has {len(outputs)} output(s)",
            )
            return None
        if not types_match(outputs[slot], spec.type):
            self.add(
                node_id,
                class_type,
                name,
                f"type mismatch: expects {spec.type}, but output {slot} of node {source_id} "
                f"({source_spec.class_type}) is {_type_name(outputs[slot])}",
            )
            return None
        return (source_id, slot)

    def check_node(self, node_id: str) -> None:
        node, spec = self.prompt[node_id], self.specs[node_id]
        class_type, inputs = node["class_type"], node["inputs"]
        before = len(self.problems)
        custom = spec.validate_params or frozenset()
        constants: dict[str, Any] = {}
        received: dict[str, Any] = {}
        for name, input_spec in spec.inputs.items():
            if input_spec.category == "hidden":
                continue
            if name not in inputs:
                if input_spec.category == "required":
                    self.add(node_id, class_type, name, "required input is missing")
                continue
            value = inputs[name]
            if is_link(value):
                link = self.check_link(node_id, class_type, name, input_spec, value)
                if link is not None:
                    inputs[name] = link
                    received[name] = _type_name(self.specs[link[0]].return_types[link[1]])
                continue
            value = unwrap(value)
            if name not in custom and not spec.validate_takes_kwargs:
                value, error = convert_value(input_spec, value)
                if error:
                    self.add(node_id, class_type, name, error)
            inputs[name] = constants[name] = value
        if spec.validate_params is not None and len(self.problems) == before:
            self.run_custom_validation(node_id, spec, constants, received)

    def run_custom_validation(self, node_id: str, spec: NodeSpec, constants: dict, received: dict) -> None:
        wanted = spec.validate_params or frozenset()
        args = {k: v for k, v in constants.items() if k in wanted or spec.validate_takes_kwargs}
        if "input_types" in wanted:
            args["input_types"] = received
        try:
            result = spec.cls.VALIDATE_INPUTS(**args)
        except Exception as error:
            self.add(node_id, spec.class_type, None, f"VALIDATE_INPUTS raised {type(error).__name__}: {error}")
            return
        if result is not True:
            self.add(node_id, spec.class_type, None, f"VALIDATE_INPUTS refused the inputs: {result}")

    def sources(self, node_id: str, needed: set[str]) -> list[str]:
        """The needed nodes that `node_id` reads from."""
        found = []
        for value in self.prompt[node_id]["inputs"].values():
            if is_link(value) and len(value) == 2 and str(value[0]) in needed:
                found.append(str(value[0]))
        return found

    def order(self, needed: list[str]) -> list[str]:
        """Depth-first topological order (iterative: long chains are fine); reports cycles."""
        needed_set = set(needed)
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        order: list[str] = []
        for root in needed:
            if root in state:
                continue
            state[root] = 1
            stack = [(root, iter(self.sources(root, needed_set)))]
            while stack:
                node_id, pending = stack[-1]
                for source in pending:
                    if state.get(source) == 1:
                        path = [n for n, _ in stack]
                        cycle = path[path.index(source) :] + [source]
                        self.add(
                            node_id,
                            self.prompt[node_id]["class_type"],
                            None,
                            "the links form a cycle (each node reads from the next): " + " -> ".join(cycle),
                        )
                    elif source not in state:
                        state[source] = 1
                        stack.append((source, iter(self.sources(source, needed_set))))
                        break
                else:
                    stack.pop()
                    state[node_id] = 2
                    order.append(node_id)
        return order

    def run(self) -> ValidatedPrompt:
        self.load_specs()
        output_ids = [i for i, s in self.specs.items() if s.is_output]
        if self.prompt and not output_ids:
            self.add(
                None,
                None,
                None,
                "the workflow has no output node (a node with OUTPUT_NODE = True, "
                "such as SaveImage or PreviewImage), so there is nothing to run",
            )
        needed = self.needed_nodes(output_ids)
        for node_id in needed:
            if node_id in self.specs:
                self.check_node(node_id)
        order = self.order(needed)
        if self.problems:
            raise ValidationError(self.problems)
        return ValidatedPrompt(self.prompt, self.specs, order, output_ids)


def validate_prompt(prompt: dict, registry: NodeRegistry) -> ValidatedPrompt:
    """Validate an API-format prompt; raises ValidationError listing every problem."""
    return _Validator(prompt, registry).run()
