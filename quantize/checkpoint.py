"""Quantized UNets in safetensors files: the tensors under one key prefix, the recipe in the metadata.

A quantized checkpoint is an ordinary single-file checkpoint (text encoder and VAE under their LDM
names) whose UNet is stored quantized, in the UNet's own (diffusers) module names, under
`UNET_KEY_PREFIX`: for each quantized layer `<name>.qdata`, `<name>.scales` (and `<name>.zero_points`
for asymmetric int4) and `<name>.bias`; every other UNet parameter as it is. The metadata says what
it is (`QUANT_MARKER`), the format, group size, symmetry, the quantized and kept layers, the model
family and the UNet config, so a loader can rebuild the exact modules (bit-identical weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .formats import QuantizedTensor
from .modules import QuantConv2d, QuantLinear
from .unet import QuantizeError, quantized_layers, set_submodule

QUANT_MARKER = "lcm_accel.quantized_unet"
FILE_VERSION = "1"
UNET_KEY_PREFIX = "lcm_accel.quantized_unet."


def _json_safe(config: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def quantized_state_dict(
    unet: torch.nn.Module, family: str, unet_config: dict | None = None, kept: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors under UNET_KEY_PREFIX, metadata) for a quantized UNet; kept sources are not saved."""
    layers = quantized_layers(unet)
    if not layers:
        raise QuantizeError("this UNet has no quantized layer: quantize it first (quantize_unet)")
    formats = {(m.format, m.group_size, m.symmetric) for _, m in layers}
    if len(formats) != 1:
        raise QuantizeError(f"the UNet mixes quantization formats {sorted(map(str, formats))}; a file holds one")
    ((fmt, group_size, symmetric),) = formats
    sources = {f"{name}.weight" for name, m in layers if m.keeps_source}
    tensors = {UNET_KEY_PREFIX + k: v.detach().contiguous() for k, v in unet.state_dict().items() if k not in sources}
    config = unet_config if unet_config is not None else getattr(unet, "config", None)
    metadata = {
        QUANT_MARKER: FILE_VERSION,
        "format": fmt,
        "group_size": json.dumps(group_size),
        "symmetric": json.dumps(bool(symmetric)),
        "family": family,
        "quantized_layers": json.dumps([name for name, _ in layers]),
        "kept_layers": json.dumps(list(kept or [])),
        "unet_config": json.dumps(_json_safe(config) if config is not None else None),
    }
    return tensors, metadata


def read_quant_metadata(path: str | Path) -> dict[str, Any] | None:
    """The decoded recipe of a quantized checkpoint, or None for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # not a safetensors file: the ordinary loader reports it
        return None
    if QUANT_MARKER not in metadata:
        return None
    if metadata[QUANT_MARKER] != FILE_VERSION:
        raise QuantizeError(
            f"{path.name}: quantized checkpoint version {metadata[QUANT_MARKER]!r}, this pack reads "
            f"version {FILE_VERSION}"
        )
    decoded = {
        k: json.loads(metadata[k])
        for k in ("group_size", "symmetric", "quantized_layers", "kept_layers", "unet_config")
    }
    return {"format": metadata["format"], "family": metadata["family"], **decoded}


def load_quantized_unet_state(unet: torch.nn.Module, tensors: dict[str, torch.Tensor], recipe: dict) -> None:
    """Turn `unet` (the float architecture; on the meta device is fine) into the saved quantized UNet:
    swap in QuantLinear / QuantConv2d built from the stored tensors, then assign every other tensor.
    `tensors` are the UNet's (UNET_KEY_PREFIX already removed). Strict: missing or extra keys raise.
    Each tensor is copied into fresh memory: tensors read from a file can sit at offsets that make
    CPU kernels take other code paths (outputs differing in the last bits)."""
    state = {k: v.clone() for k, v in tensors.items()}
    for name in recipe["quantized_layers"]:
        try:
            module = unet.get_submodule(name)
        except AttributeError:
            raise QuantizeError(
                f"quantized layer {name!r} does not exist in the UNet built from the file's config"
            ) from None
        try:
            data, scales = state.pop(f"{name}.qdata"), state.pop(f"{name}.scales")
        except KeyError as missing:
            raise QuantizeError(f"quantized checkpoint lacks tensor {missing} of layer {name!r}") from None
        zeros = state.pop(f"{name}.zero_points", None)
        bias = state.pop(f"{name}.bias", None)
        bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        q = QuantizedTensor(data, scales, recipe["format"], module.weight.shape, recipe["group_size"], zeros)
        if isinstance(module, torch.nn.Linear):
            quant = QuantLinear(q, bias, symmetric=recipe["symmetric"])
        elif isinstance(module, torch.nn.Conv2d):
            quant = QuantConv2d(
                q, bias, module.stride, module.padding, module.dilation, module.groups, symmetric=recipe["symmetric"]
            )
        else:
            raise QuantizeError(f"layer {name!r} is a {type(module).__name__}, not a Linear or Conv2d")
        set_submodule(unet, name, quant)
    quant_buffers = {f"{n}.{b}" for n in recipe["quantized_layers"] for b in ("qdata", "scales", "zero_points", "bias")}
    expected = {k for k in unet.state_dict() if k not in quant_buffers}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise QuantizeError(
            f"quantized checkpoint does not fit the UNet: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    unet.load_state_dict(state, strict=False, assign=True)
