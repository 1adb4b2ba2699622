"""The deterministic samplers few-step LoRAs other than LCM were made for: DDIM and Euler on the
"trailing" timestep grid (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", table 2), in the sigma view (ComfyUI SAMPLER signature), equal to diffusers'
`DDIMScheduler` / `EulerDiscreteScheduler` with `timestep_spacing="trailing"` step for step.

DDIM (eta 0) in the sigma view is x_prev = x0 + sigma_prev * eps: the VP update
sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps divided by sqrt(a_prev). Two diffusers details are
kept because the authors' published inference runs through them:
- DDIM steps to t - T // N, not to the next listed timestep; on the trailing grid the two differ
  when N does not divide T (12 steps: 999 -> 916 -> 833, then the model is called at 832). The
  latent is carried over to the listed timestep's sigma exactly as diffusers feeds its VP latent.
- with `set_alpha_to_one=False` (every Stable Diffusion scheduler config), the last DDIM step ends
  at alphas_cumprod[0], not at the clean latent; the result is returned in that VP form.
- `EulerDiscreteScheduler` with trailing spacing starts from noise * sigma_max (its
  `init_noise_sigma`), not from noise * sqrt(1 + sigma_max^2) as ComfyUI's full-denoise start does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .sampling import step_range
from .sigmas import default_train_sigmas, timestep_from_sigma, vp_from_ve


def trailing_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """round(arange(T, 0, -T / N)) - 1, descending int64: diffusers' "trailing" spacing (starts at T - 1)."""
    if (
        isinstance(num_inference_steps, bool)
        or not isinstance(num_inference_steps, int)
        or not (1 <= num_inference_steps <= num_train_timesteps)
    ):
        raise ValueError(
            f"`num_inference_steps` must be an integer in [1, {num_train_timesteps}], got {num_inference_steps!r}."
        )
    ratio = num_train_timesteps / num_inference_steps
    values = [round(num_train_timesteps - i * ratio) - 1 for i in range(num_inference_steps)]
    return torch.tensor(values, dtype=torch.long)


def ddim_step_ratio(timesteps: torch.Tensor, num_train_timesteps: int) -> int:
    """T // N of the schedule `timesteps` were taken from: the smallest gap between listed timesteps
    (trailing gaps are T // N or T // N + 1); a single step jumps straight to the end."""
    if len(timesteps) < 2:
        return int(timesteps[0]) + 1 if len(timesteps) else num_train_timesteps
    return int((timesteps[:-1] - timesteps[1:]).min())


def _is_full_denoise(sigma: torch.Tensor, table: torch.Tensor) -> bool:
    """ComfyUI's `max_denoise` rule: the run starts at (or above) the table's largest sigma."""
    return bool(sigma >= table[-1] * (1 - 1e-5))


@torch.no_grad()
def sample_ddim(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    train_sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) in the sigma view, equal to diffusers' `DDIMScheduler` with
    `set_alpha_to_one=False` on the same timesteps (see the module docstring for the two details)."""
    extra_args = {} if extra_args is None else extra_args
    table = (default_train_sigmas() if train_sigmas is None else train_sigmas).to(sigmas.device)
    listed = timestep_from_sigma(sigmas[:-1], table)
    ratio = ddim_step_ratio(listed, len(table))
    s_in = x.new_ones([x.shape[0]])
    level = sigmas[0]
    for i in step_range(len(sigmas) - 1, disable):
        sigma = sigmas[i]
        x = x * ((1 + sigma**2) / (1 + level**2)).sqrt()  # the VP latent, read at the listed timestep
        x0 = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
        previous = int(listed[i]) - ratio
        level = table[previous] if previous >= 0 else table[0]
        x = x0 + level * (x - x0) / sigma
    return vp_from_ve(x, level)


@torch.no_grad()
def sample_euler_trailing(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    train_sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler (no churn) in the sigma view, equal to diffusers' `EulerDiscreteScheduler` with
    trailing spacing: a full-denoise start is rescaled from sqrt(1 + sigma_max^2) to sigma_max."""
    extra_args = {} if extra_args is None else extra_args
    table = (default_train_sigmas() if train_sigmas is None else train_sigmas).to(sigmas.device)
    if _is_full_denoise(sigmas[0], table):
        x = x * sigmas[0] / (1 + sigmas[0] ** 2).sqrt()
    s_in = x.new_ones([x.shape[0]])
    for i in step_range(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
        x = x + (x - x0) / sigma * (sigma_next - sigma)
    return x
