"""Input checks shared by the pack's nodes: each error names the node and the input to change.

The harness already refuses out-of-range widget values; these checks also protect direct calls
and the combinations a single widget range cannot express (steps vs original_inference_steps).
"""

from __future__ import annotations

NONE = "None"


def check_range(node: str, name: str, value: float, low: float, high: float) -> None:
    """Refuse a number outside [low, high] (and NaN), naming the input."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{node}: {name} must be a number in [{low}, {high}], got {value!r}")


def check_int(node: str, name: str, value: int, low: int, high: int) -> None:
    """Refuse a non-integer or an integer outside [low, high], naming the input."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{node}: {name} must be an integer, got {value!r}")
    check_range(node, name, value, low, high)


def check_lcm_steps(node: str, steps: int, original_steps: int, strength: float, strength_name: str) -> None:
    """LCM draws `steps` timesteps from the int(original_steps * strength) lowest-noise points of
    its distillation grid: refuse more steps than that, naming the inputs to change."""
    available = int(original_steps * strength)
    if steps > available:
        raise ValueError(
            f"{node}: steps={steps} is more than the {available} timesteps that original_inference_steps="
            f"{original_steps} and {strength_name}={strength} leave; lower steps or raise "
            f"original_inference_steps / {strength_name}"
        )


def check_lora_choice(node: str, name: str, value: str, available: list[str], allow_none: bool) -> None:
    """Refuse a LoRA name that is not in the loras folder (or "None" where that is not allowed)."""
    if allow_none and value == NONE:
        return
    if value not in available:
        shown = ", ".join(available[:20]) if available else "the loras folder is empty"
        raise ValueError(f"{node}: {name} {value!r} is not in the loras folder; available: {shown}")


def _is_number(value) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and abs(value) != float("inf")
        and value == value
    )


def check_lora_stack(node: str, name: str, stack, available: list[str]) -> list[tuple[str, float, float]]:
    """The entries of a LORA_STACK (the list of (lora_name, model_strength, clip_strength) tuples that
    Efficiency Nodes, Comfyroll, Easy-Use and TinyTerra pass around), "None" names dropped; refuses a
    malformed entry or a file not in the loras folder, naming the entry."""
    if stack is None:
        return []
    if not isinstance(stack, (list, tuple)):
        raise ValueError(
            f"{node}: {name} must be a LORA_STACK (a list of (lora_name, model_strength, "
            f"clip_strength)), got {type(stack).__name__}"
        )
    entries = []
    for index, entry in enumerate(stack):
        where = f"{name}[{index}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str):
            raise ValueError(f"{node}: {where} must be (lora_name, model_strength, clip_strength), got {entry!r}")
        lora, model_strength, clip_strength = entry
        if lora == NONE:
            continue
        check_lora_choice(node, where, lora, available, allow_none=False)
        for label, value in (("model_strength", model_strength), ("clip_strength", clip_strength)):
            if not _is_number(value):
                raise ValueError(f"{node}: {where} {label} must be a finite number, got {value!r}")
        entries.append((lora, float(model_strength), float(clip_strength)))
    return entries
