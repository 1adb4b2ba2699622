"""LCM and TCD steps planned before the loop: per step, the UNet timestep and the coefficients of

    x_next = x0_coef * x0 + x_coef * x + noise_coef * noise(noise_from, noise_to)

in the sigma view (x is the VE latent at sigma, x0 the plain x0 prediction). Both the eager samplers
(`sampling.sample_lcm` / `sample_tcd`) and the standalone host's fast loop run these plans, so the
step math exists once.

LCM (Luo et al. 2023, multistep): the consistency output c_out(t) * x0 + c_skip(t) * x_VP, with
x_VP = x / sqrt(1 + sigma^2), then fresh noise up to sigma_next:
    x0_coef = c_out,  x_coef = c_skip / sqrt(1 + sigma^2),  noise_coef = sigma_next (0 at the end).
TCD (Zheng et al. 2024): jump to x0, re-noise deterministically to sigma_s, the training sigma of
s = floor((1 - gamma) * t_next), then add fresh noise from sigma_s up to sigma_next:
    x = x0 + (sigma_s / sigma) (x - x0)  ->  x0_coef = 1 - r,  x_coef = r  (r = sigma_s / sigma),
    noise_coef = sqrt(sigma_next^2 - sigma_s^2) when gamma > 0; the last step (sigma_next = 0) ends
    at training timestep 0 as diffusers does, in the VP view (both coefficients / sqrt(1 + sigma_s^2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boundary import consistency_scalings
from .sigmas import timestep_from_sigma


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan (see the module docstring); noise_coef 0: no noise is drawn."""

    timestep: int
    x0_coef: float
    x_coef: float
    noise_coef: float
    noise_from: float  # the sigmas a noise sampler is asked for (sigma -> sigma_next; TCD: sigma_s -> sigma_next)
    noise_to: float
    preview_is_x0: bool  # the step's `denoised` for callbacks: x0 (TCD) or the noise-free x_next (LCM)


def plan_lcm(
    sigmas: torch.Tensor, train_sigmas: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5
) -> list[PlannedStep]:
    """LCM multistep's steps for `sigmas` (trailing 0) on the model's training sigma table."""
    sigmas, table = sigmas.detach().float().cpu(), train_sigmas.detach().cpu()
    plan = []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        t = timestep_from_sigma(sigma, table)
        c_skip, c_out = consistency_scalings(t, timestep_scaling, sigma_data)
        x_coef = c_skip / (1.0 + sigma**2) ** 0.5
        noise = float(sigma_next) if sigma_next > 0 else 0.0
        plan.append(PlannedStep(int(t), float(c_out), float(x_coef), noise, float(sigma), float(sigma_next), False))
    return plan


def plan_tcd(sigmas: torch.Tensor, train_sigmas: torch.Tensor, gamma: float) -> list[PlannedStep]:
    """TCD's steps for `sigmas` (trailing 0) with stochasticity `gamma` on the training sigma table."""
    sigmas, table = sigmas.detach().float().cpu(), train_sigmas.detach().cpu()
    plan = []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        t_next = timestep_from_sigma(sigma_next, table) if sigma_next > 0 else torch.tensor(0)
        sigma_s = table[torch.floor((1 - gamma) * t_next).long()]
        ratio = float(sigma_s / sigma)
        scale, noise = 1.0, 0.0
        if sigma_next == 0:
            scale = float(1.0 / (1.0 + sigma_s**2) ** 0.5)
        elif gamma > 0:
            noise = float((sigma_next**2 - sigma_s**2).clamp(min=0).sqrt())
        t = int(timestep_from_sigma(sigma, table))
        plan.append(
            PlannedStep(t, (1.0 - ratio) * scale, ratio * scale, noise, float(sigma_s), float(sigma_next), True)
        )
    return plan


def plan_lcm_or_tcd(sigmas: torch.Tensor, train_sigmas: torch.Tensor, gamma: float = 0.0) -> list[PlannedStep]:
    """LCMSampler's plan: LCM at gamma 0, TCD above."""
    return plan_tcd(sigmas, train_sigmas, gamma) if gamma > 0 else plan_lcm(sigmas, train_sigmas)
