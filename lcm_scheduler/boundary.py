"""x0 prediction from a model output, and the consistency-model boundary condition.

An LCM's output f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0_pred(x_t, t), with
c_skip = sd^2 / ((s t)^2 + sd^2) and c_out = s t / sqrt((s t)^2 + sd^2), sd = sigma_data = 0.5 and
s = timestep_scaling = 10 (Luo et al. 2023; diffusers' `LCMScheduler`). At t = 0, c_skip = 1 and
c_out = 0: the model is the identity at the data end, the consistency boundary condition.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> None:
    """Refuse a parameterisation other than eps / v / x0 before any step runs."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def consistency_scalings(
    timestep: int | torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) for an integer timestep (scalar or per-sample tensor), in float32."""
    scaled = torch.as_tensor(timestep) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def predict_x0_and_eps(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by the model output at a VP sample with alphas_cumprod value `alpha_prod_t`."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        return x0, model_output
    if prediction_type == "v_prediction":
        x0 = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        return x0, alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t.sqrt() * model_output) / beta_prod_t.sqrt()
    check_prediction_type(prediction_type)
    raise AssertionError("unreachable")


def clip_x0(x0: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Clamp the x0 prediction to [-clip_range, clip_range] (diffusers' `clip_sample`; off by default)."""
    return x0.clamp(-clip_range, clip_range)


def threshold_x0(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Imagen): per sample, clamp to the `ratio` quantile of |x0| (at least 1,
    at most `max_value`) and divide by it. Unsuitable for latents; off by default as in diffusers."""
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def consistency_output(
    x0: torch.Tensor,
    sample: torch.Tensor,
    timestep: int | torch.Tensor,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """The LCM `denoised`: c_out(t) * x0 + c_skip(t) * sample (sample in the VP view)."""
    c_skip, c_out = consistency_scalings(timestep, timestep_scaling, sigma_data)
    return per_sample(c_out, x0.ndim) * x0 + per_sample(c_skip, x0.ndim) * sample


def per_sample(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a scalar or per-sample (batch,) coefficient to broadcast over a (batch, ...) tensor."""
    return value.reshape(-1, *([1] * (ndim - 1))) if value.ndim == 1 else value


def invert_consistency_output(
    denoised: torch.Tensor,
    sample: torch.Tensor,
    timestep: int | torch.Tensor,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """The plain x0 behind a consistency output: (denoised - c_skip(t) * sample) / c_out(t). For
    hosts whose model already applies the boundary condition; undefined at t = 0 (c_out = 0)."""
    c_skip, c_out = consistency_scalings(timestep, timestep_scaling, sigma_data)
    if bool((c_out == 0).any()):
        raise ValueError("the plain x0 cannot be recovered from a consistency output at timestep 0 (c_out = 0)")
    return (denoised - per_sample(c_skip, denoised.ndim) * sample) / per_sample(c_out, denoised.ndim)
