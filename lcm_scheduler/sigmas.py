"""The k-diffusion / ComfyUI sigma ("VE") view of a VP noise schedule.

sigma(t) = sqrt((1 - acp[t]) / acp[t]) and x_VE = x_VP / sqrt(acp[t]) = x_VP * sqrt(1 + sigma^2), so a
VE latent is x0 + sigma * eps. A SIGMAS tensor (what ComfyUI schedulers output) is a descending
list of sigmas ending in 0 (the clean end).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .schedule import lcm_timesteps, make_alphas_cumprod, tcd_timesteps


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The sigma of every training timestep (ascending in t)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def make_train_sigmas(
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """A model's training sigma table in float32, computed as diffusers' schedulers compute it."""
    return sigmas_from_alphas_cumprod(make_alphas_cumprod(beta_schedule, beta_start, beta_end, num_train_timesteps))


def default_train_sigmas() -> torch.Tensor:
    """Stable Diffusion's table: scaled_linear betas 0.00085..0.012 over 1000 steps."""
    return make_train_sigmas()


def vp_from_ve(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_VP = x_VE / sqrt(1 + sigma^2): the latent a timestep-view (diffusers) model expects."""
    return x / (1.0 + torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2) ** 0.5


def ve_from_vp(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_VE = x_VP * sqrt(1 + sigma^2): e.g. txt2img starts at noise * sqrt(1 + sigma_max^2)."""
    return x * (1.0 + torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2) ** 0.5


def timestep_from_sigma(sigma: torch.Tensor | float, train_sigmas: torch.Tensor) -> torch.Tensor:
    """The training timestep whose sigma is nearest in log-sigma (ComfyUI's
    `ModelSamplingDiscrete.timestep`); exact for sigmas taken from `train_sigmas`. Returns int64
    with the shape of `sigma`. Sigma 0 has no timestep: refused."""
    sigma = torch.as_tensor(sigma, device=train_sigmas.device)
    if (sigma <= 0).any():
        raise ValueError(f"`sigma` must be > 0 to map to a timestep, got {sigma.tolist()}.")
    distances = sigma.to(train_sigmas.dtype).log().reshape(1, -1) - train_sigmas.log().reshape(-1, 1)
    return distances.abs().argmin(dim=0).reshape(sigma.shape)


def sigmas_for_timesteps(timesteps: torch.Tensor, train_sigmas: torch.Tensor) -> torch.Tensor:
    """A SIGMAS tensor for a timestep schedule: the table's sigma at each timestep, then 0."""
    picked = train_sigmas[timesteps.to(device=train_sigmas.device, dtype=torch.long)]
    return torch.cat([picked, picked.new_zeros(1)])


def lcm_sigmas(
    num_inference_steps: int | None,
    original_inference_steps: int = 50,
    strength: float = 1.0,
    train_sigmas: torch.Tensor | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The LCM schedule (`lcm_timesteps`) as SIGMAS with a trailing 0. `train_sigmas` defaults to
    Stable Diffusion's table; its length is the number of training timesteps."""
    table = default_train_sigmas() if train_sigmas is None else train_sigmas
    schedule = lcm_timesteps(num_inference_steps, original_inference_steps, strength, len(table), timesteps)
    return sigmas_for_timesteps(schedule, table)


def tcd_sigmas(
    num_inference_steps: int | None,
    original_inference_steps: int = 50,
    strength: float = 1.0,
    train_sigmas: torch.Tensor | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    full_train_grid: bool = False,
) -> torch.Tensor:
    """The TCD schedule (`tcd_timesteps`) as SIGMAS with a trailing 0."""
    table = default_train_sigmas() if train_sigmas is None else train_sigmas
    schedule = tcd_timesteps(
        num_inference_steps, original_inference_steps, strength, len(table), timesteps, full_train_grid
    )
    return sigmas_for_timesteps(schedule, table)
