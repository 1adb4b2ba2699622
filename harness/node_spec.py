"""Read a node class the way ComfyUI does: `INPUT_TYPES`, `RETURN_TYPES`, `FUNCTION`, ...

`NodeSpec.from_class` turns the class attributes into plain data used by the converter,
the validator and the executor, and refuses classes that break the convention with a message
naming the class and the attribute.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from .errors import NodeDefinitionError

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CATEGORIES = ("required", "optional", "hidden")


@dataclass(frozen=True)
class InputSpec:
    """One input of a node: its name, section, type and options (`{"default", "min", ...}`)."""

    name: str
    category: str  # "required" | "optional" | "hidden"
    type: str  # "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", or a socket type such as "MODEL"
    options: dict = field(default_factory=dict)
    choices: tuple | None = None  # the allowed values of a COMBO

    @property
    def is_widget(self) -> bool:
        """True when the frontend shows this input as a widget (its value sits in `widgets_values`)."""
        return self.category != "hidden" and self.type in WIDGET_TYPES and not self.options.get("forceInput")

    @property
    def has_control_widget(self) -> bool:
        """True when the frontend adds a "control after generate" widget after this one:
        INT inputs named seed / noise_seed, and inputs whose options ask for it."""
        if not self.is_widget:
            return False
        if self.options.get("control_after_generate"):
            return True
        return self.type == "INT" and self.name in ("seed", "noise_seed")


def _input_spec(class_type: str, name: str, category: str, raw: Any) -> InputSpec:
    if category == "hidden":
        kind = raw[0] if isinstance(raw, (tuple, list)) else raw
        return InputSpec(name, category, str(kind))
    if not isinstance(raw, (tuple, list)) or not raw:
        raise NodeDefinitionError(
            f"node class {class_type}: INPUT_TYPES {category}[{name!r}] must be a tuple like "
            f"('INT', {{...}}) or (['a', 'b'],), got {raw!r}"
        )
    kind, options = raw[0], (raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {})
    if isinstance(kind, (list, tuple)):
        return InputSpec(name, category, "COMBO", dict(options), tuple(kind))
    if kind == "COMBO":
        return InputSpec(name, category, "COMBO", dict(options), tuple(options.get("options", ())))
    if not isinstance(kind, str):
        raise NodeDefinitionError(
            f"node class {class_type}: input {name!r} has type {kind!r}, expected a string or a list"
        )
    return InputSpec(name, category, kind, dict(options))


@dataclass(frozen=True)
class NodeSpec:
    """Everything the harness needs to know about one node class."""

    class_type: str
    cls: type
    inputs: dict[str, InputSpec]  # in INPUT_TYPES order: required, optional, hidden
    return_types: tuple
    return_names: tuple
    output_is_list: tuple[bool, ...]
    input_is_list: bool
    is_output: bool
    function: str
    validate_params: frozenset[str] | None  # argument names of VALIDATE_INPUTS, None if absent
    validate_takes_kwargs: bool = False

    @classmethod
    def from_class(cls, class_type: str, node_class: type) -> NodeSpec:
        """Read `node_class` (calls its INPUT_TYPES, which may list files) into a NodeSpec."""
        where = f"node class {class_type}"
        if not callable(getattr(node_class, "INPUT_TYPES", None)):
            raise NodeDefinitionError(f"{where} has no INPUT_TYPES classmethod")
        try:
            declared = node_class.INPUT_TYPES()
        except Exception as error:  # the node's own code: report it under its name
            raise NodeDefinitionError(f"{where}: INPUT_TYPES() raised {type(error).__name__}: {error}") from error
        if not isinstance(declared, dict):
            raise NodeDefinitionError(f"{where}: INPUT_TYPES() must return a dict, got {type(declared).__name__}")
        unknown = set(declared) - set(CATEGORIES)
        if unknown:
            raise NodeDefinitionError(
                f"{where}: INPUT_TYPES() has unknown sections {sorted(unknown)}; allowed: {CATEGORIES}"
            )
        inputs: dict[str, InputSpec] = {}
        for category in CATEGORIES:
            for name, raw in (declared.get(category) or {}).items():
                inputs[name] = _input_spec(class_type, name, category, raw)
        return_types = getattr(node_class, "RETURN_TYPES", None)
        if not isinstance(return_types, (tuple, list)):
            raise NodeDefinitionError(f"{where}: RETURN_TYPES must be a tuple, got {return_types!r}")
        function = getattr(node_class, "FUNCTION", None)
        if not isinstance(function, str) or not callable(getattr(node_class, function, None)):
            raise NodeDefinitionError(f"{where}: FUNCTION must name a method of the class, got {function!r}")
        names = tuple(
            getattr(node_class, "RETURN_NAMES", None) or (t if isinstance(t, str) else "COMBO" for t in return_types)
        )
        is_list = tuple(getattr(node_class, "OUTPUT_IS_LIST", None) or (False,) * len(return_types))
        if len(is_list) != len(return_types) or len(names) != len(return_types):
            raise NodeDefinitionError(
                f"{where}: RETURN_NAMES / OUTPUT_IS_LIST must have one entry per RETURN_TYPES entry"
            )
        params, takes_kwargs = None, False
        validate = getattr(node_class, "VALIDATE_INPUTS", None)
        if validate is not None:
            signature = inspect.signature(validate)
            params = frozenset(
                p.name for p in signature.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            )
            params -= {"self", "cls", "s"}
            takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        return cls(
            class_type=class_type,
            cls=node_class,
            inputs=inputs,
            return_types=tuple(return_types),
            return_names=names,
            output_is_list=tuple(bool(x) for x in is_list),
            input_is_list=bool(getattr(node_class, "INPUT_IS_LIST", False)),
            is_output=bool(getattr(node_class, "OUTPUT_NODE", False)),
            function=function,
            validate_params=params,
            validate_takes_kwargs=takes_kwargs,
        )

    def widget_inputs(self) -> list[InputSpec]:
        """Widget inputs in the order the frontend creates their widgets (required, then optional)."""
        return [spec for spec in self.inputs.values() if spec.is_widget]
