"""What a pack node declares beyond ComfyUI's V1 vocabulary, host-free: the contract between the
nodes (which declare) and the hosts (which register the declarations their own way).

Each node class declares itself once: ComfyUI's V1 attributes (`INPUT_TYPES`, `RETURN_TYPES`,
`OUTPUT_TOOLTIPS`, `FUNCTION`, `CATEGORY`, `DESCRIPTION`), which the headless harness reads as they
are, plus the attributes below, which the ComfyUI host turns into a V3 `io.ComfyNode` schema:

- `NODE_ID`: the pack-prefixed id (`LCMAccel_...`) that cannot collide with another pack's node;
- `DISPLAY_NAME`: the short title on the canvas;
- `SEARCH_ALIASES`: extra words the node search finds it by ("lcm", "turbo", ...);
- `OLD_IDS`: ids workflows saved before the prefix used (loaded as this node in both hosts);
- `DEPRECATED`: kept only so saved workflows load; hidden from the node search.

An input whose options hold `"advanced": True` is folded away from beginners (V3 `advanced`).
A growing list of sockets (V3 `Autogrow`) is declared with `autogrow_inputs`: headless it is the
flat optional inputs `<group>.<prefix>0`, `<group>.<prefix>1`, ... (the names ComfyUI's frontend
gives the grown sockets), and `autogrow_values` reads them back in slot order.
"""

from __future__ import annotations

from typing import Any

PREFIX = "LCMAccel_"
CATEGORY = "LCM Accel"
AUTOGROW = "autogrow"


def autogrow_inputs(
    group: str, prefix: str, socket_type: str, tooltip: str, minimum: int = 1, maximum: int = 16
) -> tuple[dict, dict]:
    """(required, optional) V1 input entries of a growing socket list `group`: the first `minimum`
    sockets required, the rest optional, each tagged with the group for the V3 conversion."""
    if not 0 <= minimum <= maximum:
        raise ValueError(f"autogrow {group!r}: need 0 <= minimum <= maximum, got {minimum}, {maximum}")
    required, optional = {}, {}
    for index in range(maximum):
        options = {
            "tooltip": tooltip,
            AUTOGROW: {"group": group, "prefix": prefix, "index": index, "min": minimum, "max": maximum},
        }
        (required if index < minimum else optional)[f"{group}.{prefix}{index}"] = (socket_type, options)
    return required, optional


def autogrow_values(group: str, values: dict[str, Any]) -> list[Any]:
    """The connected values of growing socket list `group`, in slot order: from the flat keys
    `<group>.<name><n>` (headless, and ComfyUI without Autogrow) or from the dict `{<name><n>: value}`
    that ComfyUI's Autogrow passes under `group`."""
    nested = values.get(group)
    items = (
        {f"{group}.{name}": value for name, value in nested.items()}
        if isinstance(nested, dict)
        else {key: value for key, value in values.items() if key.startswith(group + ".")}
    )

    def slot(key: str) -> int:
        digits = key[len(group) + 1 :].lstrip("abcdefghijklmnopqrstuvwxyz_")
        return int(digits) if digits.isdigit() else 0

    return [items[key] for key in sorted(items, key=slot) if items[key] is not None]


def node_id(node_class: type) -> str:
    """The id a node class registers under."""
    return node_class.NODE_ID
