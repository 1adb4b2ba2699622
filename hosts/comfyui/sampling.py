"""LCM / TCD sampling on the ComfyUI host: a `KSAMPLER` for SamplerCustom(Advanced), and LCMKSampler.

The sampler function has ComfyUI's k-diffusion signature; ComfyUI's guider supplies CFG,
conditioning, inpainting masks and model patches. We add the exact LCM schedule and step
(`lcm_scheduler`), the boundary condition on the plain x0 with the model's full training table,
and per-step noise that continues the seed's generator (as the standalone host and diffusers do).
LCMKSampler goes through `comfy.sample.sample_custom` with ComfyUI's preview callback, so previews,
the progress bar and interrupt work as in ComfyUI's own samplers.
"""

from __future__ import annotations

import logging

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ...lcm_scheduler import (
    SAMPLER_KINDS,
    check_gamma,
    continuing_generator,
    lcm_sigmas,
    sample_accelerated,
    sigmas_for_timesteps,
    timestep_from_sigma,
)
from .model_sampling import model_train_sigmas, plain_x0_model, train_sigmas

LOGGER = logging.getLogger("lcm_accel.accelerator")
_SAID: set[str] = set()


def sample_lcm_tcd(model, x, sigmas, extra_args=None, callback=None, disable=None, gamma: float = 0.0):
    """KSAMPLER function: LCM multistep (gamma 0) or TCD (gamma > 0) on ComfyUI's wrapped model."""
    check_gamma(float(gamma))
    return sample_accelerator(model, x, sigmas, extra_args, callback, disable, "tcd" if gamma > 0 else "lcm", gamma)


def lcm_sampler(gamma: float = 0.0) -> comfy.samplers.KSAMPLER:
    """The SAMPLER of LCMSampler."""
    check_gamma(float(gamma))
    return comfy.samplers.KSAMPLER(sample_lcm_tcd, extra_options={"gamma": float(gamma)})


@torch.no_grad()
def sample_accelerator(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    kind: str = "lcm",
    gamma: float = 0.0,
    pure_noise_starts: tuple[int, ...] = (),
):
    """KSAMPLER function: an accelerator family's sampler (`lcm_scheduler.sample_accelerated`) on the
    plain x0 of ComfyUI's wrapped model and the model's full training table."""
    extra_args = {} if extra_args is None else extra_args
    base_model = model.inner_model.inner_model
    model_sampling = base_model.model_sampling
    table = train_sigmas(model_sampling, base_model.model_config).to(x.device)
    _warn_if_snapped(model_sampling, sigmas, table)
    seed = extra_args.get("seed")
    generator = None if seed is None or kind not in ("lcm", "tcd") else continuing_generator(x, seed)
    return sample_accelerated(
        plain_x0_model(model, model_sampling),
        x,
        sigmas,
        kind,
        gamma,
        extra_args=extra_args,
        callback=callback,
        disable=disable,
        generator=generator,
        train_sigmas=table,
        pure_noise_starts=tuple(pure_noise_starts),
    )


def _warn_if_snapped(model_sampling, sigmas: torch.Tensor, table: torch.Tensor) -> None:
    """ComfyUI's "lcm" sampling mode (ModelSamplingDiscreteDistilled) keeps LCM's 50-point grid and reads
    any other timestep as its grid neighbour: say so (once per schedule) when the sigmas leave that grid."""
    grid = getattr(model_sampling, "sigmas", None)
    if grid is None or len(grid) >= len(table):
        return
    wanted = timestep_from_sigma(sigmas[sigmas > 0].to(table.device), table)
    read = model_sampling.timestep(sigmas[sigmas > 0].to(model_sampling.sigmas.device)).to(wanted.device)
    if not torch.equal(wanted, read.long()):
        message = (
            f"the MODEL is in LCM sampling mode ({len(grid)}-point grid): timesteps "
            f"{wanted.tolist()} reach the UNet as {read.long().tolist()}; load accelerator LoRAs with "
            f"the Accelerator LoRA Loader (it keeps the full table for off-grid families) or use "
            f"ModelSamplingDiscrete eps"
        )
        if message not in _SAID:
            _SAID.add(message)
            LOGGER.warning(message)


def accelerator_sampler(
    kind: str, gamma: float = 0.0, pure_noise_starts: tuple[int, ...] = ()
) -> comfy.samplers.KSAMPLER:
    """The SAMPLER of LCMAcceleratorSampler."""
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {kind!r}")
    check_gamma(float(gamma))
    return comfy.samplers.KSAMPLER(
        sample_accelerator,
        extra_options={"kind": kind, "gamma": float(gamma), "pure_noise_starts": tuple(pure_noise_starts)},
    )


def model_timestep_sigmas(model, timesteps: torch.Tensor) -> torch.Tensor:
    """Training timesteps as sigmas of the model's own table, trailing 0."""
    return sigmas_for_timesteps(timesteps, model_train_sigmas(model))


def model_lcm_sigmas(model, steps: int, original_steps: int = 50, strength: float = 1.0) -> torch.Tensor:
    """LCM's timesteps as sigmas of the model's own training table, trailing 0."""
    return lcm_sigmas(steps, original_steps, strength, train_sigmas=model_train_sigmas(model))


def lcm_ksample(
    model,
    seed: int,
    steps: int,
    cfg: float,
    positive,
    negative,
    latent: dict,
    original_steps: int = 50,
    gamma: float = 0.0,
    denoise: float = 1.0,
) -> dict:
    """SamplerCustom(add_noise, seed, cfg, LCMSampler(gamma), LCMScheduler(steps, original, denoise))."""
    sigmas = model_lcm_sigmas(model, steps, original_steps, denoise)
    return custom_sample(model, seed, cfg, positive, negative, lcm_sampler(gamma), sigmas, latent)


def custom_sample(model, seed: int, cfg: float, positive, negative, sampler, sigmas, latent: dict) -> dict:
    """SamplerCustom(add_noise, seed, cfg, sampler, sigmas) through `comfy.sample.sample_custom`, with
    ComfyUI's preview callback, progress bar and interrupt."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    samples = comfy.sample.sample_custom(
        model,
        noise,
        cfg,
        sampler,
        sigmas,
        positive,
        negative,
        latent_image,
        noise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    return {**latent, "samples": samples}
