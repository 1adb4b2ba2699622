"""LCM / TCD sampling on the standalone host, the SAMPLER values, and ComfyUI's custom sampling.

The LCM math is `lcm_scheduler`'s (sigma view). This module only adapts it to a ModelHost:
- `PlainX0Denoiser`: the GuidedDenoiser (CFG, conditioning, SDXL ids) returning the PLAIN x0
  prediction over the full training table, even when the MODEL's sampling mode is "lcm", because
  `lcm_scheduler.sample_lcm` applies the consistency boundary condition itself (no double use).
  Full LCM UNets (`time_cond_proj_dim`) get the guidance embedding instead of CFG, as diffusers'
  LatentConsistencyModelPipeline does.
- the training table in float32, built as diffusers builds it, so a seed reproduces diffusers.
- noise: the per-step noise continues the seed's CPU generator after the initial draw, as diffusers'
  LCM pipelines draw it from one generator.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ...lcm_scheduler import (
    SAMPLER_KINDS,
    check_gamma,
    continuing_generator,
    lcm_guidance_embedding,
    lcm_sigmas,
    make_train_sigmas,
    pure_noise_start,
    sample_accelerated,
    sample_lcm_or_tcd,
    sigmas_for_timesteps,
    timestep_from_sigma,
)
from .deepcache import apply_deepcache, deepcache_run
from .denoiser import GuidedDenoiser, InpaintDenoiser, sigma_table
from .ksampler import _latent_scale, _progress, prepare_mask, prepare_noise, start_latent
from .samplers import SAMPLERS, seeded_noise_sampler
from .types import ModelHost

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# How the UNet output becomes the plain x0: ComfyUI's "lcm" mode is EPS plus the boundary condition.
PLAIN_SAMPLING_TYPES = {"eps": "eps", "v_prediction": "v_prediction", "lcm": "eps", "x0": "x0"}


def lcm_train_sigmas(model: ModelHost) -> torch.Tensor:
    """The model's training sigma table in float32, computed as diffusers' schedulers compute it."""
    if model.model_options.get("zsnr", False):
        raise NotImplementedError("LCM sampling of a zero-terminal-SNR (zsnr) MODEL is not supported: "
                                  "set zsnr to false in ModelSamplingDiscrete")
    schedule = model.noise_schedule
    return make_train_sigmas(schedule.get("beta_schedule", "scaled_linear"), schedule["beta_start"],
                             schedule["beta_end"], schedule["num_train_timesteps"])


def model_lcm_sigmas(model: ModelHost, steps: int, original_steps: int = 50, strength: float = 1.0) -> torch.Tensor:
    """LCM's timesteps as sigmas of the model's own table, trailing 0 (`lcm_scheduler.lcm_sigmas`)."""
    return lcm_sigmas(steps, original_steps, strength, train_sigmas=lcm_train_sigmas(model))


class _TrainTable:
    """The sigma -> UNet timestep lookup GuidedDenoiser needs, over the float32 training table."""

    def __init__(self, train_sigmas: torch.Tensor):
        self.sigmas = train_sigmas

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return timestep_from_sigma(sigma, self.sigmas.to(sigma.device))


class _GuidanceEmbeddedUNet(torch.nn.Module):
    """A full LCM UNet called with the guidance-scale embedding as `timestep_cond`."""

    def __init__(self, unet: torch.nn.Module, embedding: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.embedding = embedding

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs):
        cond = self.embedding.to(device=sample.device, dtype=sample.dtype).expand(sample.shape[0], -1)
        return self.unet(sample, timestep, timestep_cond=cond, **kwargs)


class PlainX0Denoiser(GuidedDenoiser):
    """D(x, sigma) -> plain x0 (no boundary condition) with CFG; cfg == 1 makes one UNet pass."""

    def __init__(self, model: ModelHost, positive: list, negative: list, cfg: float):
        embed_dim = getattr(model.unet.config, "time_cond_proj_dim", None)
        if embed_dim:
            dtype = next(model.unet.parameters()).dtype
            embedding = lcm_guidance_embedding(cfg, 1, embed_dim, dtype=dtype)
            model, cfg = replace(model, unet=_GuidanceEmbeddedUNet(model.unet, embedding)), 1.0
        super().__init__(model, positive, negative, cfg)
        self.table = _TrainTable(lcm_train_sigmas(model))
        self.kind = PLAIN_SAMPLING_TYPES[model.sampling_type]


@dataclass(frozen=True)
class SamplingJob:
    """One custom-sampling run: the MODEL and conditioning, the start latent x (scaled, noised for
    sigmas[0]), the sigmas, the seed, a per-step callback and the inpainting wrapper."""

    model: ModelHost
    positive: list
    negative: list
    cfg: float
    x: torch.Tensor
    sigmas: torch.Tensor
    seed: int
    step: Callable[[int], None]
    wrap: Callable[[Denoiser], Denoiser]


class _Recorder:
    """Remembers the denoiser's last output (SamplerCustom's `denoised_output`)."""

    def __init__(self, inner: Denoiser):
        self.inner, self.last = inner, None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.last = self.inner(x, sigma)
        return self.last


@dataclass(frozen=True)
class KDiffusionSampler:
    """SAMPLER of KSamplerSelect: a k-diffusion sampler by ComfyUI's name, on the MODEL's own
    sampling mode (GuidedDenoiser), with ComfyUI's seeded ancestral noise."""

    name: str

    def sample(self, job: SamplingJob) -> tuple[torch.Tensor, torch.Tensor]:
        """(final latent, last denoised prediction), both scaled."""
        from .fast_sampling import note_eager_sampler

        note_eager_sampler(job.model, self.name)
        denoiser = _Recorder(job.wrap(GuidedDenoiser(job.model, job.positive, job.negative, job.cfg)))
        out = SAMPLERS[self.name](denoiser, job.x, job.sigmas, job.step, seeded_noise_sampler(job.x, job.seed))
        return out, (out if denoiser.last is None else denoiser.last)


@dataclass(frozen=True)
class LCMTCDSampler:
    """SAMPLER of LCMSampler: `lcm_scheduler.sample_lcm` (gamma 0) or `sample_tcd` (gamma > 0) on the
    plain x0 denoiser and the model's training table. Per-step noise continues the seed's generator
    after one latent-sized draw, i.e. after the initial noise, as diffusers' LCM pipelines do."""

    gamma: float = 0.0

    def __post_init__(self):
        check_gamma(float(self.gamma))

    def sample(self, job: SamplingJob) -> tuple[torch.Tensor, torch.Tensor]:
        """(final latent, last denoised prediction), both scaled."""
        from .fast_sampling import fast_lcm_sample

        fast = fast_lcm_sample(job, float(self.gamma))
        if fast is not None:
            return fast
        denoiser = job.wrap(PlainX0Denoiser(job.model, job.positive, job.negative, job.cfg))
        generator = continuing_generator(job.x, job.seed)
        last: dict = {}

        def callback(info: dict) -> None:
            last["denoised"] = info["denoised"]
            job.step(info["i"])

        out = sample_lcm_or_tcd(denoiser, job.x, job.sigmas, float(self.gamma), callback=callback, disable=True,
                                generator=generator, train_sigmas=lcm_train_sigmas(job.model).to(job.x.device))
        return out, last.get("denoised", out)


@dataclass(frozen=True)
class AcceleratorSampler:
    """SAMPLER of LCMAcceleratorSampler: an accelerator family's sampler (`lcm_scheduler.sample_accelerated`)
    on the plain x0 denoiser; "lcm" and "tcd" are LCMTCDSampler's (fast path and noise included)."""

    kind: str
    gamma: float = 0.0
    pure_noise_starts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {self.kind!r}")

    def sample(self, job: SamplingJob) -> tuple[torch.Tensor, torch.Tensor]:
        """(final latent, last denoised prediction), both scaled."""
        table = lcm_train_sigmas(job.model).to(job.x.device)
        job = replace(job, x=pure_noise_start(job.x, job.sigmas, table, self.pure_noise_starts))
        if self.kind in ("lcm", "tcd"):
            return LCMTCDSampler(float(self.gamma) if self.kind == "tcd" else 0.0).sample(job)
        denoiser = job.wrap(PlainX0Denoiser(job.model, job.positive, job.negative, job.cfg))
        last: dict = {}

        def callback(info: dict) -> None:
            last["denoised"] = info["denoised"]
            job.step(info["i"])

        out = sample_accelerated(denoiser, job.x, job.sigmas, self.kind, callback=callback, disable=True,
                                 train_sigmas=table)
        return out, last.get("denoised", out)


def activate_model_patches(model: ModelHost) -> None:
    """Bring the shared UNet's weights in line with the MODEL's LoRA patches before sampling."""
    from .lora import activate_patches

    activate_patches(model)


def sample_custom(
    model: ModelHost, add_noise: bool, seed: int, cfg: float, positive: list, negative: list,
    sampler, sigmas: torch.Tensor, latent: dict,
) -> tuple[dict, dict]:
    """What ComfyUI's SamplerCustom computes: (output, denoised_output) LATENTs."""
    if not hasattr(sampler, "sample"):
        raise TypeError(f"sampler must be a SAMPLER (from KSamplerSelect or LCMSampler), got {type(sampler).__name__}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if len(sigmas) <= 1:
        return ({**latent}, {**latent})
    samples = latent["samples"].float()
    noise = prepare_noise(samples, seed, latent.get("batch_index")) if add_noise else torch.zeros_like(samples)
    activate_model_patches(model)
    device = next(model.unet.parameters()).device
    scale = _latent_scale(model)
    latent_in, noise = samples.to(device) * scale, noise.to(device)
    x = start_latent(noise, latent_in, float(sigmas[0]), float(sigma_table(model).sigma_max))
    wrap = _identity
    if "noise_mask" in latent:
        mask = prepare_mask(latent["noise_mask"], samples.shape).to(device)
        wrap = lambda denoiser: InpaintDenoiser(denoiser, latent_in, noise, mask)  # noqa: E731
    step, bar = _progress(len(sigmas) - 1)
    try:
        with deepcache_run(model, sigmas) as run_model:
            job = SamplingJob(run_model, positive, negative, float(cfg), x, sigmas.to(device), int(seed), step, wrap)
            out, denoised = sampler.sample(job)
    finally:
        bar.close()
    return ({**latent, "samples": (out / scale).cpu()}, {**latent, "samples": (denoised / scale).cpu()})


def _identity(denoiser: Denoiser) -> Denoiser:
    return denoiser


def lcm_ksample(
    model: ModelHost, seed: int, steps: int, cfg: float, positive: list, negative: list, latent: dict,
    original_steps: int = 50, gamma: float = 0.0, denoise: float = 1.0,
) -> dict:
    """LCM (gamma 0) or TCD sampling in one call; `denoise` < 1 is img2img (LCM strength = denoise):
    the latent is noised to the first timestep. Equals SamplerCustom + LCMScheduler + LCMSampler."""
    sigmas = model_lcm_sigmas(model, steps, original_steps, denoise)
    return sample_custom(model, True, seed, cfg, positive, negative, LCMTCDSampler(gamma), sigmas, latent)[0]


class StandaloneLCMHost:
    """`hosts.interface.LCMHost` on the standalone (diffusers) host."""

    name = "standalone"

    def lora_names(self) -> list[str]:
        from ...harness.model_paths import get_model_paths

        return get_model_paths().get_filename_list("loras")

    def add_loras(self, model: ModelHost, loras: list[tuple[str, float]], rank: int | None = None) -> ModelHost:
        from .lora import add_loras, load_lora_file

        return add_loras(model, [(load_lora_file(name), float(weight)) for name, weight in loras], rank=rank)

    def add_clip_loras(self, clip, loras: list[tuple[str, float]]):
        from .lora import add_clip_loras_by_name

        return add_clip_loras_by_name(clip, loras)

    def set_lcm_sampling(self, model: ModelHost) -> ModelHost:
        model = model.clone()
        model.model_options["sampling"] = "lcm"
        return model

    def lcm_sigmas(self, model: ModelHost, steps: int, original_steps: int, strength: float) -> torch.Tensor:
        return model_lcm_sigmas(model, steps, original_steps, strength)

    def lcm_sampler(self, gamma: float) -> LCMTCDSampler:
        return LCMTCDSampler(float(gamma))

    def lora_path(self, name: str) -> str:
        from ...harness.model_paths import get_model_paths

        return str(get_model_paths().get_full_path("loras", name))

    def timestep_sigmas(self, model: ModelHost, timesteps: torch.Tensor) -> torch.Tensor:
        return sigmas_for_timesteps(timesteps, lcm_train_sigmas(model))

    def accelerator_sampler(self, kind: str, gamma: float, pure_noise_starts: tuple[int, ...] = ()) -> AcceleratorSampler:
        return AcceleratorSampler(kind, float(gamma), tuple(pure_noise_starts))

    def custom_sample(self, model, seed, cfg, positive, negative, sampler, sigmas, latent) -> dict:
        return sample_custom(model, True, seed, cfg, positive, negative, sampler, sigmas, latent)[0]

    def lcm_ksample(self, model, seed, steps, cfg, positive, negative, latent, original_steps, gamma, denoise) -> dict:
        return lcm_ksample(model, seed, steps, cfg, positive, negative, latent, original_steps, gamma, denoise)

    def deepcache(self, model: ModelHost, settings) -> ModelHost:
        return apply_deepcache(model, settings)

    def fast_mode(self, model: ModelHost, clip, vae, enable: bool, backend: str) -> tuple:
        from .fast_mode import FastModeSettings, with_fast_mode

        settings = FastModeSettings(bool(enable), backend)
        return tuple(None if value is None else with_fast_mode(value, settings) for value in (model, clip, vae))

    def quantize_unet(self, model: ModelHost, fmt: str, keep: str, group_size: int, keep_source: bool) -> ModelHost:
        from .quantize import quantize_model

        return quantize_model(model, fmt, keep, group_size, keep_source)


STANDALONE_HOST = StandaloneLCMHost()
