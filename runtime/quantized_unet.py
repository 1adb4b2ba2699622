"""The quantized UNet of a quantized checkpoint file, built without allocating the float weights
(what the checkpoint reader calls for a file `write_quantized_checkpoint` wrote)."""

from __future__ import annotations

import torch

from ..quantize import QuantizeError
from ..quantize.checkpoint import UNET_KEY_PREFIX, load_quantized_unet_state


def build_quantized_unet(state: dict[str, torch.Tensor], recipe: dict, name: str) -> torch.nn.Module:
    """The quantized diffusers UNet of a quantized checkpoint (built on the meta device: the float
    weights are never allocated)."""
    from diffusers import UNet2DConditionModel

    if not recipe.get("unet_config"):
        raise QuantizeError(f"{name}: quantized checkpoint has no UNet config in its metadata")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**recipe["unet_config"])
    unet_state = {k[len(UNET_KEY_PREFIX) :]: v for k, v in state.items() if k.startswith(UNET_KEY_PREFIX)}
    try:
        load_quantized_unet_state(unet, unet_state, recipe)
    except QuantizeError as error:
        raise QuantizeError(f"{name}: {error}") from None
    return unet.eval().requires_grad_(False)
