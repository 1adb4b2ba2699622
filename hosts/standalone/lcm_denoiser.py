"""The plain x0 denoiser LCM / TCD and the accelerator samplers run on, on a ModelHost.

- `PlainX0Denoiser`: the GuidedDenoiser (CFG, conditioning, SDXL ids) returning the PLAIN x0
  prediction over the full training table, even when the MODEL's sampling mode is "lcm", because
  `lcm_scheduler`'s samplers apply the consistency boundary condition themselves (no double use).
  Full LCM UNets (`time_cond_proj_dim`) get the guidance embedding instead of CFG, as diffusers'
  LatentConsistencyModelPipeline does.
- the training table in float32, built as diffusers builds it, so a seed reproduces diffusers.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ...lcm_scheduler import lcm_guidance_embedding, lcm_sigmas, make_train_sigmas, timestep_from_sigma
from ...runtime.model_types import ModelHost
from .denoiser import GuidedDenoiser

# How the UNet output becomes the plain x0: ComfyUI's "lcm" mode is EPS plus the boundary condition.
PLAIN_SAMPLING_TYPES = {"eps": "eps", "v_prediction": "v_prediction", "lcm": "eps", "x0": "x0"}


def lcm_train_sigmas(model: ModelHost) -> torch.Tensor:
    """The model's training sigma table in float32, computed as diffusers' schedulers compute it."""
    if model.model_options.get("zsnr", False):
        raise NotImplementedError(
            "LCM sampling of a zero-terminal-SNR (zsnr) MODEL is not supported: "
            "set zsnr to false in ModelSamplingDiscrete"
        )
    schedule = model.noise_schedule
    return make_train_sigmas(
        schedule.get("beta_schedule", "scaled_linear"),
        schedule["beta_start"],
        schedule["beta_end"],
        schedule["num_train_timesteps"],
    )


def model_lcm_sigmas(model: ModelHost, steps: int, original_steps: int = 50, strength: float = 1.0) -> torch.Tensor:
    """LCM's timesteps as sigmas of the model's own table, trailing 0 (`lcm_scheduler.lcm_sigmas`)."""
    return lcm_sigmas(steps, original_steps, strength, train_sigmas=lcm_train_sigmas(model))


class TrainTable:
    """The sigma -> UNet timestep lookup GuidedDenoiser needs, over the float32 training table."""

    def __init__(self, train_sigmas: torch.Tensor):
        self.sigmas = train_sigmas

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return timestep_from_sigma(sigma, self.sigmas.to(sigma.device))


class GuidanceEmbeddedUNet(torch.nn.Module):
    """A full LCM UNet called with the guidance-scale embedding as `timestep_cond`."""

    def __init__(self, unet: torch.nn.Module, embedding: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.embedding = embedding

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs):
        cond = self.embedding.to(device=sample.device, dtype=sample.dtype).expand(sample.shape[0], -1)
        return self.unet(sample, timestep, timestep_cond=cond, **kwargs)


class PlainX0Denoiser(GuidedDenoiser):
    """D(x, sigma) -> plain x0 (no boundary condition) with CFG; cfg == 1 makes one UNet pass."""

    def __init__(self, model: ModelHost, positive: list, negative: list, cfg: float):
        embed_dim = getattr(model.unet.config, "time_cond_proj_dim", None)
        if embed_dim:
            dtype = next(model.unet.parameters()).dtype
            embedding = lcm_guidance_embedding(cfg, 1, embed_dim, dtype=dtype)
            model, cfg = replace(model, unet=GuidanceEmbeddedUNet(model.unet, embedding)), 1.0
        super().__init__(model, positive, negative, cfg)
        self.table = TrainTable(lcm_train_sigmas(model))
        self.kind = PLAIN_SAMPLING_TYPES[model.sampling_type]
