"""Wrap a timestep-view model (diffusers UNet convention) as a sigma-view denoiser.

The result follows ComfyUI's convention, `denoised = denoiser(x_ve, sigma * s_in, **extra_args)`
returning the plain x0 prediction, so one sigma-view sampler serves both ComfyUI models and
diffusers UNets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .boundary import check_prediction_type, per_sample, predict_x0_and_eps
from .sigmas import sigmas_from_alphas_cumprod, timestep_from_sigma, vp_from_ve

VPModel = Callable[..., torch.Tensor]


def denoiser_from_vp_model(
    model: VPModel, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"
) -> Callable[..., torch.Tensor]:
    """`model(x_vp, t, **extra_args)` (t: int64 per sample) predicting eps / v / x0 becomes
    `denoiser(x_ve, sigma, **extra_args) -> x0`, like ComfyUI's EPS / V_PREDICTION model sampling:
    the input is scaled by 1 / sqrt(1 + sigma^2), t is the table timestep nearest to sigma."""
    check_prediction_type(prediction_type)
    train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        sigma = per_sample(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)
        timestep = timestep_from_sigma(sigma.flatten(), train_sigmas.to(x.device)).reshape(-1)
        x_vp = vp_from_ve(x, sigma)
        alpha_prod = 1.0 / (1.0 + sigma**2)
        x0, _ = predict_x0_and_eps(model(x_vp, timestep, **extra_args), x_vp, alpha_prod, prediction_type)
        return x0

    return denoiser
