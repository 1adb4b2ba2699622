"""ComfyUI's KSampler pipeline: seeded noise, sigma schedule, start/end steps, latent scaling.

LATENT samples are unscaled VAE latents; sampling happens on `latent * scaling_factor` and
the result is divided back. Initial noise is ComfyUI's `prepare_noise`: torch.manual_seed(seed)
then one CPU randn of the latent's shape (or per `batch_index`, drawn in index order).
"""

from __future__ import annotations

import math

import torch

from .deepcache import deepcache_run
from .denoiser import GuidedDenoiser, InpaintDenoiser, sigma_table
from .lora import activate_patches
from .noise_schedule import ksampler_sigmas
from .samplers import SAMPLERS, seeded_noise_sampler
from .types import ModelHost

from .names import SAMPLER_NAMES


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


def _progress(total: int):
    """(per-step callback, progress bar): the callback checks for interruption, then advances the bar."""
    from ...harness.interrupt import throw_if_interrupted
    from ...harness.progress import ProgressBar

    bar = ProgressBar(total)

    def step(_: int) -> None:
        throw_if_interrupted()
        bar.update(1)

    return step, bar


def common_ksampler(
    model: ModelHost, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
    positive: list, negative: list, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
    start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
) -> tuple[dict]:
    """What ComfyUI's KSampler / KSamplerAdvanced nodes compute, on the standalone host."""
    if sampler_name not in SAMPLERS:
        raise ValueError(f"sampler_name {sampler_name!r} is not available; choose from {', '.join(SAMPLER_NAMES)}")
    samples = latent["samples"].float()
    if disable_noise:
        noise = torch.zeros(samples.size(), dtype=samples.dtype, device="cpu")
    else:
        noise = prepare_noise(samples, seed, latent.get("batch_index"))

    activate_patches(model)
    from .fast_sampling import note_eager_sampler

    note_eager_sampler(model, sampler_name)
    table = sigma_table(model)
    sigmas = ksampler_sigmas(table, scheduler, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return ({**latent, "samples": latent["samples"]},)
    if len(sigmas) <= 1:
        return ({**latent, "samples": latent["samples"]},)

    device = next(model.unet.parameters()).device
    scale = _latent_scale(model)
    latent_in = samples.to(device) * scale
    noise = noise.to(device)
    x = start_latent(noise, latent_in, float(sigmas[0]), float(table.sigma_max))
    noise_sampler = seeded_noise_sampler(x, seed)
    step, bar = _progress(len(sigmas) - 1)
    try:
        with deepcache_run(model, sigmas) as run_model:
            denoiser = GuidedDenoiser(run_model, positive, negative, cfg)
            if "noise_mask" in latent:
                mask = prepare_mask(latent["noise_mask"], samples.shape).to(device)
                denoiser = InpaintDenoiser(denoiser, latent_in, noise, mask)
            out = SAMPLERS[sampler_name](denoiser, x, sigmas.to(device), step, noise_sampler)
    finally:
        bar.close()
    return ({**latent, "samples": (out / scale).cpu()},)


def _latent_scale(model: ModelHost) -> float:
    """The family's latent scaling factor (ComfyUI's latent formats: SD1.5 0.18215, SDXL 0.13025)."""
    from .checkpoint_config import SCALING_FACTORS

    if model.family not in SCALING_FACTORS:
        raise ValueError(f"no latent scaling factor known for model family {model.family!r}")
    return SCALING_FACTORS[model.family]
