"""The distilled LoRA as a file (through `lora_merge.writer`, the project's one LoRA writer)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..lora_merge.writer import write_lora
from .distill import DistillSettings
from .student import lora_factors


def lora_metadata(
    settings: DistillSettings, family: str, rank: int, alpha: float, steps: int, base: str
) -> dict[str, str]:
    """What the file says about itself: base family, rank, method, steps, guidance range."""
    lcd = settings.lcd
    w_range = f"{float(lcd.w)}" if lcd.w is not None else f"{float(lcd.w_min)}-{float(lcd.w_max)}"
    method = settings.mode + ("+reward" if settings.reward_scale else "")
    return {
        "lcm_accel.method": f"lcm-lora:{method}",
        "lcm_accel.base_family": family,
        "lcm_accel.base": Path(base).name,
        "lcm_accel.rank": str(rank),
        "lcm_accel.alpha": str(alpha),
        "lcm_accel.steps": str(steps),
        "lcm_accel.w_range": w_range,
        "lcm_accel.guidance_convention": "uncond + w * (cond - uncond)",
        "lcm_accel.loss": lcd.loss,
        "lcm_accel.num_ddim_steps": str(lcd.num_ddim_steps),
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
    }


def export_lora(
    unet: torch.nn.Module,
    path: str | Path,
    settings: DistillSettings,
    family: str,
    steps: int,
    base: str,
    lora_format: str = "kohya",
) -> Path:
    """Write the UNet's peft LoRA to `path` (kohya by default, or "peft") with metadata."""
    factors, alpha, rank = lora_factors(unet)
    metadata = lora_metadata(settings, family, rank, alpha, steps, base)
    return write_lora(path, factors, alpha, lora_format, metadata)
