"""LCMQuantizeUNet on the standalone host, and quantized checkpoint files.

MODEL clones share one UNet (the checkpoint loader caches it) and LoRAs are patched into it lazily,
so quantizing cannot swap layers in the shared UNet. `quantize_model` instead:
1. brings the shared UNet in line with this MODEL's LoRAs (`activate_patches`: merged in place by
   `lora_merge.LoraPatcher`),
2. copies the module tree WITHOUT copying the weights of the layers about to be quantized (they
   are shared, read once, then dropped from the copy; the kept layers and norms are copied, a few MB),
3. quantizes the copy (`quantize.quantize_unet`) and returns a MODEL clone holding it, with an
   empty patch list (its LoRAs are in the quantized weights).
The float UNet stays in the loader's cache as long as the process keeps it, so a graph saves no
memory over the float model; a quantized checkpoint (`write_quantized_checkpoint`, the CLI's
`quantize`) loads without the float weights. With `keep_source`, the copy keeps its own float copy
of the merged weights: LoRAs added after the node are patched into it and re-quantized.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch

from ..quantize import (
    QuantizeError,
    is_quantized,
    normalize_format,
    quantize_unet,
    quantized_state_dict,
    split_layers,
)
from .checkpoint_config import UNET_PREFIX
from .checkpoints import read_state_dict
from .lora_state import activate_patches
from .model_types import ModelHost

QUANT_OPTION = "lcm_accel_quantized"  # model_options entry: the QuantizeReport


def private_unet_copy(unet: torch.nn.Module, shared: list[torch.nn.Module]) -> torch.nn.Module:
    """A deep copy of the module tree in which the weights of `shared` layers are the same tensors
    (not copied); the copy has no LoRA patcher (that state is held by `lora_state`, not the module)."""
    memo: dict[int, object] = {id(module.weight): module.weight for module in shared}
    return copy.deepcopy(unet, memo)


def quantize_model(
    model: ModelHost,
    fmt: str,
    keep: str | list[str] | None = "default",
    group_size: int = 64,
    keep_source: bool = False,
) -> ModelHost:
    """A MODEL clone whose UNet is this MODEL's merged UNet, quantized (see the module docstring)."""
    if not isinstance(model, ModelHost):
        raise TypeError(f"quantize needs a MODEL (ModelHost), got {type(model).__name__}")
    if is_quantized(model.unet):
        raise QuantizeError("this MODEL's UNet is already quantized: quantize the float model only once")
    fmt = normalize_format(fmt)
    todo, _, _ = split_layers(model.unet, keep)  # checks the patterns before anything is touched
    activate_patches(model)
    unet = private_unet_copy(model.unet, [] if keep_source else [m for _, m in todo])
    report = quantize_unet(unet, fmt, keep, keep_source=keep_source, group_size=group_size)
    clone = replace(model.clone(), unet=unet, patches=[])
    clone.model_options[QUANT_OPTION] = report
    return clone


# --------------------------------------------------------------------------- files
def write_quantized_checkpoint(path: str | Path, model: ModelHost, base_checkpoint: str | Path) -> Path:
    """Save `model`'s quantized UNet with the base checkpoint's text encoder and VAE tensors (LDM names,
    copied as stored) into one safetensors file that `load_checkpoint` reads back bit-identically."""
    from safetensors.torch import save_file

    base_checkpoint, path = Path(base_checkpoint), Path(path)
    if base_checkpoint.is_dir() or base_checkpoint.name == "model_index.json":
        raise QuantizeError(
            f"{base_checkpoint}: quantized checkpoints are written from single-file checkpoints "
            "only (the text encoder and VAE are copied from it)"
        )
    if path.suffix != ".safetensors":
        raise QuantizeError(f"{path}: the output must be a .safetensors file")
    report = model.model_options.get(QUANT_OPTION)
    tensors, metadata = quantized_state_dict(model.unet, model.family, kept=report.kept if report else None)
    others = {k: v.contiguous() for k, v in read_state_dict(base_checkpoint).items() if not k.startswith(UNET_PREFIX)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**others, **tensors}, str(path), metadata=metadata)
    return path
