"""Write LoRA factors to a safetensors file in the layouts real files use (the project's one writer).

- kohya (ComfyUI's `LoraLoader`, diffusers' `load_lora_weights`, A1111): ``lora_unet_<module path
  with '_'>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; the module path is the diffusers
  UNet name, the names ComfyUI's `comfy/lora.py` maps through `unet_to_diffusers`.
- diffusers / PEFT: ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight``. The format has no
  alpha: a scale alpha / rank other than 1 is folded into ``lora_B`` so every loader applies it.
Conv factors keep the kernel on the down factor (LoCon) and a 1x1 up, as peft's Conv2d LoRA does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

Factors = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (down, up)
LORA_FORMATS = ("kohya", "peft")


def kohya_state_dict(
    factors: Factors, alpha: float | None, names: Callable[[str], str] | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a kohya LoRA; `alpha` None writes no alpha keys (loaders then use alpha = rank)."""
    tensors: dict[str, torch.Tensor] = {}
    for module, (down, up) in factors.items():
        key = "lora_unet_" + (names(module) if names else module).replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.detach().contiguous()
        tensors[f"{key}.lora_up.weight"] = up.detach().contiguous()
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    return tensors


def peft_state_dict(factors: Factors, prefix: str = "unet.", alpha: float | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a diffusers/PEFT LoRA; a given `alpha` is folded into lora_B as alpha / rank."""
    tensors: dict[str, torch.Tensor] = {}
    for module, (down, up) in factors.items():
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        tensors[f"{prefix}{module}.lora_A.weight"] = down.detach().contiguous()
        tensors[f"{prefix}{module}.lora_B.weight"] = (up.detach() * scale if scale != 1.0 else up.detach()).contiguous()
    return tensors


def save_lora_file(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: Mapping[str, object] | None = None
) -> Path:
    """Save tensors (moved to CPU) with string metadata; creates the parent folder."""
    from safetensors.torch import save_file

    if not tensors:
        raise ValueError(f"refusing to write LoRA file '{path}' with no tensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    save_file({k: v.cpu() for k, v in tensors.items()}, str(path), metadata=meta or None)
    return path


def write_lora(
    path: str | Path,
    factors: Factors,
    alpha: float | None,
    lora_format: str = "kohya",
    metadata: Mapping[str, object] | None = None,
    names: Callable[[str], str] | None = None,
    prefix: str = "unet.",
) -> Path:
    """Write `factors` as a kohya (default) or peft LoRA file with `metadata`."""
    if lora_format == "kohya":
        return save_lora_file(path, kohya_state_dict(factors, alpha, names), metadata)
    if lora_format == "peft":
        return save_lora_file(path, peft_state_dict(factors, prefix, alpha), metadata)
    raise ValueError(f"LoRA format must be one of {LORA_FORMATS}, got {lora_format!r}")


def write_kohya(
    path: str | Path,
    factors: Factors,
    alpha: float | None,
    names: Callable[[str], str] | None = None,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """kohya layout: lora_unet_<module path with '_'>.lora_down/.lora_up(.alpha)."""
    return write_lora(path, factors, alpha, "kohya", metadata, names)


def write_peft(
    path: str | Path, factors: Factors, prefix: str = "unet.", metadata: Mapping[str, object] | None = None
) -> Path:
    """diffusers/PEFT layout: <prefix><module path>.lora_A/lora_B.weight (no alpha: alpha = rank)."""
    return write_lora(path, factors, None, "peft", metadata, prefix=prefix)
