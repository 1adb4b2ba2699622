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
