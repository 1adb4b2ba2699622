"""Which accelerator family a MODEL carries: a small record in the MODEL's `model_options`, so it
travels with ComfyUI's ModelPatcher clones (deep-copied options) and the standalone ModelHost clones
alike. Host-neutral: both MODEL types have `clone()` and a `model_options` dict."""

from __future__ import annotations

from typing import Any

RECORD_KEY = "lcm_accel_accelerator"


def accelerator_record(model: Any) -> dict | None:
    """The record on `model` ({"family", "lora", "lora_steps", "reason"}), or None."""
    record = getattr(model, "model_options", {}).get(RECORD_KEY)
    return dict(record) if record else None


def with_accelerator_record(model: Any, family: str, lora: str, lora_steps: int | None, reason: str) -> Any:
    """A clone of `model` recording that its accelerator LoRA `lora` is of `family`."""
    clone = model.clone()
    clone.model_options[RECORD_KEY] = {"family": family, "lora": lora, "lora_steps": lora_steps, "reason": reason}
    return clone
