"""One sampling run as the SAMPLER values receive it (SamplerCustom, KSampler and the LCM nodes all
build it in `sampling_pipeline`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...runtime.model_types import ModelHost

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplingJob:
    """One custom-sampling run: the MODEL and conditioning, the start latent x (scaled, noised for
    sigmas[0]), the sigmas, the seed, a per-step callback and the inpainting wrapper."""

    model: ModelHost
    positive: list
    negative: list
    cfg: float
    x: torch.Tensor
    sigmas: torch.Tensor
    seed: int
    step: Callable[[int], None]
    wrap: Callable[[Denoiser], Denoiser]
