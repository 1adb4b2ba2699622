"""Guidance-scale embedding for full LCM UNets (`time_cond_proj_dim`), VDM-style Fourier features.

A full LCM (not an LCM-LoRA) is distilled with the guidance scale as an input: the UNet gets
`timestep_cond = embedding(w)`. diffusers' LCM pipelines use the Imagen CFG convention for the user's
`guidance_scale`, so the distilled w is `guidance_scale - 1`.
"""

from __future__ import annotations

import torch


def guidance_scale_embedding(
    w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """sin/cos features of 1000 * w at frequencies 10000^(-k / (dim/2 - 1)); shape (len(w), embedding_dim)."""
    if w.ndim != 1:
        raise ValueError(f"`w` must be 1-D (one value per sample), got shape {tuple(w.shape)}.")
    if embedding_dim < 4:
        raise ValueError(f"`embedding_dim` must be >= 4, got {embedding_dim}.")
    half_dim = embedding_dim // 2
    log_step = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    frequencies = torch.exp(torch.arange(half_dim, dtype=dtype) * -log_step)
    angles = (w * 1000.0).to(dtype)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


def lcm_guidance_embedding(
    guidance_scale: float, batch_size: int, embedding_dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The `timestep_cond` diffusers' LCM pipelines pass for `guidance_scale` (w = guidance_scale - 1)."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    w = torch.tensor(float(guidance_scale) - 1).repeat(batch_size)
    return guidance_scale_embedding(w, embedding_dim, dtype)
