"""The LCM boundary condition as a ComfyUI model-sampling object, and the tables LCM needs.

`set_lcm_sampling` does what ComfyUI's `ModelSamplingDiscrete` node does with sampling "lcm" (an
object patch of `model_sampling` on a clone: the distilled 50-entry sigma table, so ComfyUI's own
schedulers land on LCM's timestep grid, and the boundary condition in `calculate_denoised`), with one
difference: the consistency function gets the VP latent x / sqrt(1 + sigma^2), as LCM was trained
and diffusers computes it, where ComfyUI's "lcm" mode passes the VE latent x. The core KSampler
with sampler "lcm" works on the result as on ComfyUI's own.

Our LCM / TCD samplers apply the boundary themselves on the PLAIN x0 over the full training table
(`lcm_scheduler`); `plain_x0_model` undoes a model sampling's boundary so they work on any MODEL.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_sampling
import torch
from comfy_extras.nodes_model_advanced import LCM as ComfyLCM
from comfy_extras.nodes_model_advanced import ModelSamplingDiscreteDistilled

from ...lcm_scheduler import (
    consistency_output,
    invert_consistency_output,
    make_train_sigmas,
    vp_from_ve,
)
from ...lcm_scheduler.boundary import per_sample

# ComfyUI's beta schedule names -> lcm_scheduler's (diffusers') names
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear"}


class ExactLCMBoundary:
    """Mixin for a ComfyUI model sampling: denoised = c_out(t) x0 + c_skip(t) x_VP (LCM's f)."""

    def calculate_denoised(self, sigma, model_output, model_input):
        x0 = super().calculate_denoised(sigma, model_output, model_input)
        sample = vp_from_ve(model_input, per_sample(sigma, model_input.ndim))
        return consistency_output(x0, sample, self.timestep(sigma))


class LCMSamplingEps(ExactLCMBoundary, ModelSamplingDiscreteDistilled, comfy.model_sampling.EPS):
    """LCM on an epsilon-prediction model (the published LCM-LoRAs)."""


class LCMSamplingV(ExactLCMBoundary, ModelSamplingDiscreteDistilled, comfy.model_sampling.V_PREDICTION):
    """LCM on a v-prediction model."""


def set_lcm_sampling(model):
    """A clone of the ModelPatcher whose model sampling is LCM (see the module docstring)."""
    current = model.get_model_object("model_sampling")
    if isinstance(current, comfy.model_sampling.V_PREDICTION):
        sampling_class = LCMSamplingV
    elif isinstance(current, comfy.model_sampling.EPS) and not isinstance(current, comfy.model_sampling.X0):
        sampling_class = LCMSamplingEps
    else:
        raise ValueError(
            f"LCM sampling needs an epsilon- or v-prediction model with discrete timesteps "
            f"(SD1.x, SDXL); this MODEL samples with {type(current).__name__}"
        )
    clone = model.clone()
    clone.add_object_patch("model_sampling", sampling_class(model.model.model_config))
    return clone


def train_sigmas(model_sampling, model_config) -> torch.Tensor:
    """The model's full training sigma table in float32, computed as diffusers' schedulers compute
    it (the standalone host uses the same table, so a seed gives the same image in both hosts)."""
    if not isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete):
        raise ValueError(
            f"LCM / TCD sampling needs a discrete-timestep model (SD1.x, SDXL); this MODEL "
            f"samples with {type(model_sampling).__name__}"
        )
    if getattr(model_sampling, "zsnr", False):
        raise ValueError(
            "LCM sampling of a zero-terminal-SNR (zsnr) MODEL is not supported: set zsnr to "
            "false in ModelSamplingDiscrete"
        )
    settings = model_config.sampling_settings if model_config is not None else {}
    schedule = settings.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(
            f"LCM sampling supports the beta schedules {sorted(BETA_SCHEDULES)}; this model's is {schedule!r}"
        )
    return make_train_sigmas(
        BETA_SCHEDULES[schedule], model_sampling.linear_start, model_sampling.linear_end, model_sampling.num_timesteps
    )


def model_train_sigmas(model) -> torch.Tensor:
    """`train_sigmas` of a ModelPatcher (its object-patched model sampling included)."""
    return train_sigmas(model.get_model_object("model_sampling"), model.model.model_config)


def plain_x0_model(model: Callable, model_sampling) -> Callable:
    """`model(x, sigma, **kw)` returning the plain x0 even when `model_sampling` applies an LCM
    boundary condition (ours on the VP latent, ComfyUI's "lcm" on the VE latent)."""
    if isinstance(model_sampling, ExactLCMBoundary):
        boundary_input = lambda x, sigma: vp_from_ve(x, per_sample(sigma, x.ndim))  # noqa: E731
    elif isinstance(model_sampling, ComfyLCM):
        boundary_input = lambda x, sigma: x  # noqa: E731
    else:
        return model

    def plain(x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        denoised = model(x, sigma, **kwargs)
        return invert_consistency_output(denoised, boundary_input(x, sigma), model_sampling.timestep(sigma))

    return plain
