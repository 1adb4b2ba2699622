"""LCM / TCD sampling on the ComfyUI host: a `KSAMPLER` for SamplerCustom(Advanced), and LCMKSampler.

The sampler function has ComfyUI's k-diffusion signature; ComfyUI's guider supplies CFG,
conditioning, inpainting masks and model patches. We add the exact LCM schedule and step
(`lcm_scheduler`), the boundary condition on the plain x0 with the model's full training table,
and per-step noise that continues the seed's generator (as the standalone host and diffusers do).
LCMKSampler goes through `comfy.sample.sample_custom` with ComfyUI's preview callback, so previews,
the progress bar and interrupt work as in ComfyUI's own samplers.
"""
from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ...lcm_scheduler import check_gamma, continuing_generator, lcm_sigmas, sample_lcm_or_tcd
from .model_sampling import model_train_sigmas, plain_x0_model, train_sigmas


@torch.no_grad()
def sample_lcm_tcd(model, x, sigmas, extra_args=None, callback=None, disable=None, gamma: float = 0.0):
    """KSAMPLER function: LCM multistep (gamma 0) or TCD (gamma > 0) on ComfyUI's wrapped model."""
    extra_args = {} if extra_args is None else extra_args
    base_model = model.inner_model.inner_model  # KSamplerX0Inpaint -> guider -> BaseModel
    model_sampling = base_model.model_sampling
    table = train_sigmas(model_sampling, base_model.model_config).to(x.device)
    seed = extra_args.get("seed")
    generator = None if seed is None else continuing_generator(x, seed)
    return sample_lcm_or_tcd(plain_x0_model(model, model_sampling), x, sigmas, gamma, extra_args=extra_args,
                             callback=callback, disable=disable, generator=generator, train_sigmas=table)


def lcm_sampler(gamma: float = 0.0) -> comfy.samplers.KSAMPLER:
    """The SAMPLER of LCMSampler."""
    check_gamma(float(gamma))
    return comfy.samplers.KSAMPLER(sample_lcm_tcd, extra_options={"gamma": float(gamma)})


def model_lcm_sigmas(model, steps: int, original_steps: int = 50, strength: float = 1.0) -> torch.Tensor:
    """LCM's timesteps as sigmas of the model's own training table, trailing 0."""
    return lcm_sigmas(steps, original_steps, strength, train_sigmas=model_train_sigmas(model))


def lcm_ksample(model, seed: int, steps: int, cfg: float, positive, negative, latent: dict,
                original_steps: int = 50, gamma: float = 0.0, denoise: float = 1.0) -> dict:
    """SamplerCustom(add_noise, seed, cfg, LCMSampler(gamma), LCMScheduler(steps, original, denoise))."""
    sigmas = model_lcm_sigmas(model, steps, original_steps, denoise)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    samples = comfy.sample.sample_custom(
        model, noise, cfg, lcm_sampler(gamma), sigmas, positive, negative, latent_image,
        noise_mask=latent.get("noise_mask"), callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
    )
    return {**latent, "samples": samples}
