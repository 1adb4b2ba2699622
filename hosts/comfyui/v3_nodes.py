"""The pack's node declarations as ComfyUI V3 nodes (`comfy_api.latest.io.ComfyNode`).

A declaration (`nodes.declaration`) speaks ComfyUI's V1 vocabulary plus a few V3 attributes; this
module is the one place that turns it into a V3 schema: each V1 input becomes the matching `io` input
(tooltip, default, range and any other option kept), `"advanced": True` becomes V3's `advanced`, a
growing socket list becomes one `io.Autogrow` input (or, in a ComfyUI without Autogrow, its flat
sockets under the same names the grown ones get), and `execute` calls the declaration's FUNCTION.
Newer `io` features are used where this ComfyUI has them (search aliases, advanced, Autogrow).
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..node_declaration import AUTOGROW

_WIDGET_KEYS = {
    "INT": ("default", "min", "max", "step", "control_after_generate", "display_mode"),
    "FLOAT": ("default", "min", "max", "step", "round", "display_mode"),
    "BOOLEAN": ("default", "label_on", "label_off"),
    "STRING": ("default", "multiline", "placeholder", "dynamic_prompts"),
    "COMBO": ("default", "control_after_generate"),
}
_WIDGETS = {"INT": io.Int, "FLOAT": io.Float, "BOOLEAN": io.Boolean, "STRING": io.String, "COMBO": io.Combo}


def _finish(made: io.Input, extra: dict, advanced: bool) -> io.Input:
    """Options V3 has no argument for go to the input's extra dict (merged into what the frontend
    reads, as in V1); `advanced` is V3's own attribute where this ComfyUI has it."""
    if advanced:
        if hasattr(made, "advanced"):
            made.advanced = True
        else:
            extra = {**extra, "advanced": True}
    if extra:
        made.extra_dict = {**(getattr(made, "extra_dict", None) or {}), **extra}
    return made


def v3_input(name: str, raw: tuple, optional: bool) -> io.Input:
    """One V1 input entry (`("INT", {...})`, `([choices], {...})`, `("MODEL", {...})`) as a V3 input."""
    kind, options = raw[0], dict(raw[1]) if len(raw) > 1 and isinstance(raw[1], dict) else {}
    tooltip = options.pop("tooltip", None)
    advanced = bool(options.pop("advanced", False))
    options.pop(AUTOGROW, None)
    if isinstance(kind, (list, tuple)):
        kind, options["options"] = "COMBO", list(kind)
    if kind in _WIDGETS:
        known = {key: options.pop(key) for key in _WIDGET_KEYS[kind] if key in options}
        if kind == "COMBO":
            known["options"] = options.pop("options")
        made = _WIDGETS[kind].Input(name, optional=optional, tooltip=tooltip, **known)
    else:
        made = io.Custom(kind).Input(name, optional=optional, tooltip=tooltip)
    return _finish(made, options, advanced)


def _autogrow(group: dict, raw: tuple) -> list[io.Input]:
    """A growing socket list: one `io.Autogrow` input, or its flat sockets where there is no Autogrow."""
    kind, options = raw[0], raw[1]
    autogrow = getattr(io, "Autogrow", None)
    if autogrow is None or not hasattr(autogrow, "TemplatePrefix"):
        return [
            v3_input(f"{group['group']}.{group['prefix']}{index}", raw, optional=index >= group["min"])
            for index in range(group["max"])
        ]
    template = io.Custom(kind).Input(group["prefix"], tooltip=options.get("tooltip"))
    prefix = autogrow.TemplatePrefix(template, prefix=group["prefix"], min=group["min"], max=group["max"])
    return [autogrow.Input(group["group"], template=prefix, tooltip=options.get("tooltip"))]


def v3_inputs(input_types: dict) -> list[io.Input]:
    """Every input of a V1 `INPUT_TYPES()` dict, in order (required, then optional); a growing socket
    list appears once, where its first socket is."""
    made, grown = [], set()
    for section in ("required", "optional"):
        for name, raw in input_types.get(section, {}).items():
            group = raw[1].get(AUTOGROW) if len(raw) > 1 and isinstance(raw[1], dict) else None
            if group is None:
                made.append(v3_input(name, raw, optional=section == "optional"))
            elif group["group"] not in grown:
                grown.add(group["group"])
                made.extend(_autogrow(group, raw))
    return made


def v3_outputs(declaration: type) -> list[io.Output]:
    """RETURN_TYPES with their names and tooltips."""
    names = getattr(declaration, "RETURN_NAMES", None) or ()
    tips = getattr(declaration, "OUTPUT_TOOLTIPS", None) or ()
    return [
        io.Custom(kind).Output(
            display_name=names[i] if i < len(names) else None, tooltip=tips[i] if i < len(tips) else None
        )
        for i, kind in enumerate(declaration.RETURN_TYPES)
    ]


def v3_schema(declaration: type, node_id: str | None = None, deprecated: bool | None = None) -> io.Schema:
    """The V3 schema of a declaration (under `node_id` when it is registered under an old id)."""
    fields = {field.name for field in dataclasses.fields(io.Schema)}
    schema = {
        "node_id": node_id or declaration.NODE_ID,
        "display_name": declaration.DISPLAY_NAME,
        "category": declaration.CATEGORY,
        "description": declaration.DESCRIPTION,
        "inputs": v3_inputs(declaration.INPUT_TYPES()),
        "outputs": v3_outputs(declaration),
        "is_output_node": bool(getattr(declaration, "OUTPUT_NODE", False)),
        "is_deprecated": bool(getattr(declaration, "DEPRECATED", False) if deprecated is None else deprecated),
    }
    if "search_aliases" in fields:
        schema["search_aliases"] = list(declaration.SEARCH_ALIASES)
    return io.Schema(**schema)


def v3_node(declaration: type, node_id: str | None = None, deprecated: bool | None = None) -> type[io.ComfyNode]:
    """A V3 node class running `declaration` (registered under `node_id`, default its NODE_ID)."""

    def define_schema(cls) -> io.Schema:
        return v3_schema(declaration, node_id, deprecated)

    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(*getattr(declaration(), declaration.FUNCTION)(**inputs))

    namespace = {
        "__doc__": declaration.__doc__,
        "__module__": __name__,
        "DECLARATION": declaration,
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    }
    validate = getattr(declaration, "VALIDATE_INPUTS", None)
    if validate is not None:
        # the declaration's own signature: ComfyUI skips its combo check for the inputs named there
        namespace["validate_inputs"] = classmethod(validate.__func__)
    return type(f"{declaration.__name__}V3", (io.ComfyNode,), namespace)
