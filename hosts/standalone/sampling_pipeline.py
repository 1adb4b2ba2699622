"""The standalone host's one sampling pipeline, shared by KSampler, KSamplerAdvanced, SamplerCustom
and the LCM nodes: seeded noise, latent scaling, inpainting masks, DeepCache, progress, then a
SAMPLER value (`sampler_values`) runs the steps.

LATENT samples are unscaled VAE latents; sampling happens on `latent * scaling_factor` and the
result is divided back. Initial noise is ComfyUI's `prepare_noise`: torch.manual_seed(seed) then
one CPU randn of the latent's shape (or per `batch_index`, drawn in index order).
"""

from __future__ import annotations

import math

import torch

from ...k_sampling import SAMPLERS, ksampler_sigmas
from ...runtime.checkpoint_config import SCALING_FACTORS
from ...runtime.interrupt import throw_if_interrupted
from ...runtime.lora_state import activate_patches
from ...runtime.model_types import ModelHost
from ...runtime.progress import ProgressBar
from .controlnet import with_uncond_controls, without_deepcache
from .deepcache import deepcache_run
from .denoiser import InpaintDenoiser, sigma_table
from .lcm_denoiser import model_lcm_sigmas
from .names import MAX_SEED, SAMPLER_NAMES
from .sampler_values import KDiffusionSampler, LCMTCDSampler
from .sampling_job import Denoiser, SamplingJob


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """The initial noise ComfyUI draws for `seed` (batch_index: noise of those batch positions)."""
    generator = torch.manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout, generator=generator, device="cpu")
    wanted = sorted(set(int(i) for i in batch_index))
    drawn = {}
    for i in range(wanted[-1] + 1):
        noise = torch.randn([1] + list(latent.shape[1:]), dtype=latent.dtype, generator=generator, device="cpu")
        if i in wanted:
            drawn[i] = noise
    return torch.cat([drawn[int(i)] for i in batch_index], dim=0)


def start_latent(noise: torch.Tensor, latent: torch.Tensor, sigma0: float, sigma_max: float) -> torch.Tensor:
    """ComfyUI's noise scaling: a full denoise starts at noise * sqrt(1 + sigma^2) (pure noise in the
    VP view), a partial one at latent + sigma * noise (the latent noised to sigma0)."""
    full = math.isclose(sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sigma_max
    return noise * (math.sqrt(1.0 + sigma0**2) if full else sigma0) + latent


def prepare_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A noise mask resized (bilinear) to the latent and repeated over channels and batch."""
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(math.ceil(shape[0] / mask.shape[0]), 1, 1, 1)
    return mask[: shape[0]]


def inpaint_noise(sampler, noise: torch.Tensor, seed: int) -> torch.Tensor:
    """The noise that keeps the unmasked region of an inpainting run on the noised original: the
    initial noise, except for samplers marked `random_inpaint_noise` (KSamplerSelect's "ddim"), for
    which ComfyUI draws a fresh latent-sized CPU normal from torch.manual_seed(seed + 1)."""
    if not getattr(sampler, "random_inpaint_noise", False):
        return noise
    if int(seed) + 1 > MAX_SEED:
        raise ValueError(
            f"seed {seed}: the {getattr(sampler, 'name', 'sampler')!r} sampler draws its inpainting noise from "
            "seed + 1, which is past the largest seed; use a smaller seed"
        )
    generator = torch.manual_seed(int(seed) + 1)
    return torch.randn(noise.shape, generator=generator, device="cpu").to(device=noise.device, dtype=noise.dtype)


def step_progress(total: int):
    """(per-step callback, progress bar): the callback checks for interruption, then advances the bar."""
    bar = ProgressBar(total)

    def step(_: int) -> None:
        throw_if_interrupted()
        bar.update(1)

    return step, bar


def latent_scale(model: ModelHost) -> float:
    """The family's latent scaling factor (ComfyUI's latent formats: SD1.5 0.18215, SDXL 0.13025)."""
    if model.family not in SCALING_FACTORS:
        raise ValueError(f"no latent scaling factor known for model family {model.family!r}")
    return SCALING_FACTORS[model.family]


def sample_custom(
    model: ModelHost,
    add_noise: bool,
    seed: int,
    cfg: float,
    positive: list,
    negative: list,
    sampler,
    sigmas: torch.Tensor,
    latent: dict,
) -> tuple[dict, dict]:
    """What ComfyUI's SamplerCustom computes: (output, denoised_output) LATENTs."""
    samples = latent["samples"].float()
    noise = prepare_noise(samples, seed, latent.get("batch_index")) if add_noise else torch.zeros_like(samples)
    return sample_with_noise(model, noise, seed, cfg, positive, negative, sampler, sigmas, latent)


def sample_with_noise(
    model: ModelHost,
    noise: torch.Tensor,
    seed: int,
    cfg: float,
    positive: list,
    negative: list,
    sampler,
    sigmas: torch.Tensor,
    latent: dict,
) -> tuple[dict, dict]:
    """SamplerCustom's run with the initial noise given (SamplerCustomAdvanced's NOISE value);
    `seed` still seeds the sampler's own per-step noise."""
    if not hasattr(sampler, "sample"):
        raise TypeError(
            f"sampler must be a SAMPLER (from KSamplerSelect, LCM Sampler or Accelerator Sampler), got {type(sampler).__name__}"
        )
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if len(sigmas) <= 1:
        return ({**latent}, {**latent})
    samples = latent["samples"].float()
    if tuple(noise.shape) != tuple(samples.shape):
        raise ValueError(f"the noise has shape {tuple(noise.shape)}, the latent {tuple(samples.shape)}")
    noise = noise.float()
    negative = with_uncond_controls(positive, negative)
    activate_patches(model)
    device = next(model.unet.parameters()).device
    scale = latent_scale(model)
    latent_in, noise = samples.to(device) * scale, noise.to(device)
    x = start_latent(noise, latent_in, float(sigmas[0]), float(sigma_table(model).sigma_max))
    wrap = _identity
    if "noise_mask" in latent:
        mask = prepare_mask(latent["noise_mask"], samples.shape).to(device)
        kept_noise = inpaint_noise(sampler, noise, seed)
        wrap = lambda denoiser: InpaintDenoiser(denoiser, latent_in, kept_noise, mask)  # noqa: E731
    step, bar = step_progress(len(sigmas) - 1)
    try:
        with deepcache_run(without_deepcache(model, positive, negative), sigmas) as run_model:
            job = SamplingJob(run_model, positive, negative, float(cfg), x, sigmas.to(device), int(seed), step, wrap)
            out, denoised = sampler.sample(job)
    finally:
        bar.close()
    return ({**latent, "samples": (out / scale).cpu()}, {**latent, "samples": (denoised / scale).cpu()})


def _identity(denoiser: Denoiser) -> Denoiser:
    return denoiser


def common_ksampler(
    model: ModelHost,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent: dict,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> tuple[dict]:
    """What ComfyUI's KSampler / KSamplerAdvanced nodes compute: the scheduler's sigmas cut to
    [start_step, last_step], then SamplerCustom with the named k-diffusion sampler."""
    if sampler_name not in SAMPLERS:
        raise ValueError(f"sampler_name {sampler_name!r} is not available; choose from {', '.join(SAMPLER_NAMES)}")
    sigmas = ksampler_sigmas(sigma_table(model), scheduler, steps, denoise, sampler=sampler_name)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return ({**latent, "samples": latent["samples"]},)
    out, _ = sample_custom(
        model, not disable_noise, seed, cfg, positive, negative, KDiffusionSampler(sampler_name), sigmas, latent
    )
    return (out,)


def lcm_ksample(
    model: ModelHost,
    seed: int,
    steps: int,
    cfg: float,
    positive: list,
    negative: list,
    latent: dict,
    original_steps: int = 50,
    gamma: float = 0.0,
    denoise: float = 1.0,
) -> dict:
    """LCM (gamma 0) or TCD sampling in one call; `denoise` < 1 is img2img (LCM strength = denoise):
    the latent is noised to the first timestep. Equals SamplerCustom + LCMScheduler + LCMSampler."""
    sigmas = model_lcm_sigmas(model, steps, original_steps, denoise)
    return sample_custom(model, True, seed, cfg, positive, negative, LCMTCDSampler(gamma), sigmas, latent)[0]
