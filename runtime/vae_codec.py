"""Pixels <-> latents with a diffusers AutoencoderKL, in ComfyUI's conventions.

IMAGE is (B, H, W, C) in 0..1; LATENT["samples"] holds the VAE's own latents, unscaled (the
sampler multiplies by the family's scaling factor on the way in and divides on the way out,
as ComfyUI's latent formats do). Encoding takes the posterior mean, so it is deterministic.
"""

from __future__ import annotations

from functools import partial

import torch

from .fast_mode import fast_or_eager, settings_of
from .model_types import VaeHost

DOWNSCALE = 8


def crop_to_multiple(pixels: torch.Tensor, multiple: int = DOWNSCALE) -> torch.Tensor:
    """Centre-crop (B, H, W, C) pixels to sides divisible by `multiple` (ComfyUI's VAEEncode crop)."""
    height = pixels.shape[1] // multiple * multiple
    width = pixels.shape[2] // multiple * multiple
    if (height, width) == tuple(pixels.shape[1:3]):
        return pixels
    top = (pixels.shape[1] % multiple) // 2
    left = (pixels.shape[2] % multiple) // 2
    return pixels[:, top : top + height, left : left + width, :]


def _decode_forward(module: torch.nn.Module, latents: torch.Tensor) -> tuple[torch.Tensor]:
    return (module.decode(latents).sample,)


@torch.no_grad()
def decode(vae: VaeHost, latents: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, 3) in 0..1 from unscaled latents (B, 4, h, w)."""
    module = vae.vae
    dtype = next(module.parameters()).dtype
    device = next(module.parameters()).device
    (out,) = fast_or_eager(
        settings_of(vae),
        "vae_decode",
        module,
        partial(_decode_forward, module),
        (latents.to(device=device, dtype=dtype),),
    )
    return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()


@torch.no_grad()
def encode(vae: VaeHost, pixels: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (B, 4, H/8, W/8) from IMAGE pixels (RGB channels used, cropped to /8)."""
    module = vae.vae
    dtype = next(module.parameters()).dtype
    device = next(module.parameters()).device
    pixels = crop_to_multiple(pixels)[..., :3]
    x = pixels.movedim(-1, 1).to(device=device, dtype=dtype) * 2.0 - 1.0
    return module.encode(x).latent_dist.mode().float().cpu()
