"""The exact LCM multistep scheduler/sampler (and TCD), pure torch.

Agrees with diffusers' `LCMScheduler` / `TCDScheduler` on the same inputs; usable from a
timestep-view model (diffusers UNet) and from a sigma-view denoiser (ComfyUI / k-diffusion).
"""

from .accelerated import pure_noise_start, sample_accelerated
from .boundary import (
    PREDICTION_TYPES,
    check_prediction_type,
    clip_x0,
    consistency_output,
    consistency_scalings,
    invert_consistency_output,
    predict_x0_and_eps,
    threshold_x0,
)
from .denoiser import denoiser_from_vp_model
from .deterministic import sample_ddim, sample_euler_trailing, trailing_timesteps
from .families import (
    FAMILIES,
    SAMPLER_KINDS,
    Detection,
    Family,
    check_recipe,
    detect_family,
    family_timesteps,
    get_family,
    mix_warning,
)
from .guidance import guidance_scale_embedding, lcm_guidance_embedding
from .plan import PlannedStep, plan_lcm, plan_lcm_or_tcd, plan_tcd
from .sampling import (
    check_gamma,
    continuing_generator,
    draw_noise,
    make_noise_sampler,
    run_plan,
    sample_lcm,
    sample_lcm_or_tcd,
    sample_lcm_vp,
    sample_tcd,
    sample_tcd_vp,
)
from .schedule import BETA_SCHEDULES, add_noise, lcm_timesteps, make_alphas_cumprod, make_betas, tcd_timesteps
from .sigmas import (
    default_train_sigmas,
    lcm_sigmas,
    make_train_sigmas,
    sigmas_for_timesteps,
    sigmas_from_alphas_cumprod,
    tcd_sigmas,
    timestep_from_sigma,
    ve_from_vp,
    vp_from_ve,
)

__all__ = [
    "FAMILIES",
    "SAMPLER_KINDS",
    "Detection",
    "Family",
    "check_recipe",
    "detect_family",
    "family_timesteps",
    "get_family",
    "mix_warning",
    "PlannedStep",
    "plan_lcm",
    "plan_lcm_or_tcd",
    "plan_tcd",
    "run_plan",
    "pure_noise_start",
    "sample_accelerated",
    "sample_ddim",
    "sample_euler_trailing",
    "trailing_timesteps",
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "add_noise",
    "check_prediction_type",
    "clip_x0",
    "consistency_output",
    "consistency_scalings",
    "invert_consistency_output",
    "default_train_sigmas",
    "make_train_sigmas",
    "denoiser_from_vp_model",
    "check_gamma",
    "continuing_generator",
    "draw_noise",
    "guidance_scale_embedding",
    "lcm_guidance_embedding",
    "lcm_sigmas",
    "lcm_timesteps",
    "make_alphas_cumprod",
    "make_betas",
    "make_noise_sampler",
    "predict_x0_and_eps",
    "sample_lcm",
    "sample_lcm_or_tcd",
    "sample_lcm_vp",
    "sample_tcd",
    "sample_tcd_vp",
    "sigmas_for_timesteps",
    "sigmas_from_alphas_cumprod",
    "tcd_sigmas",
    "tcd_timesteps",
    "threshold_x0",
    "timestep_from_sigma",
    "ve_from_vp",
    "vp_from_ve",
]
