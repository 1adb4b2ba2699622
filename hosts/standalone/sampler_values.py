"""The SAMPLER values of the standalone host: KSamplerSelect's k-diffusion samplers, LCMSampler's
LCM / TCD and LCMAcceleratorSampler's families. Each has `sample(job) -> (final latent, last denoised)`;
`sampling_pipeline.sample_custom` prepares the job (noise, scaling, masks, DeepCache, progress).

LCM / TCD noise: the per-step noise continues the seed's CPU generator after the initial draw, as
diffusers' LCM pipelines draw it from one generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...k_sampling import RANDOM_INPAINT_NOISE_SAMPLERS, SAMPLERS, NoiseSource
from ...lcm_scheduler import (
    SAMPLER_KINDS,
    check_gamma,
    continuing_generator,
    pure_noise_start,
    sample_accelerated,
    sample_lcm_or_tcd,
)
from .denoiser import GuidedDenoiser
from .fast_sampling import fast_lcm_sample, note_eager_sampler
from .lcm_denoiser import PlainX0Denoiser, lcm_train_sigmas
from .sampling_job import Denoiser, SamplingJob


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
    sampling mode (GuidedDenoiser), with ComfyUI's noise for the seed (`k_sampling.NoiseSource`:
    seeded Gaussian draws, or the Brownian tree of the SDE samplers)."""

    name: str

    @property
    def random_inpaint_noise(self) -> bool:
        """Whether an inpainting run keeps the unmasked region on fresh noise from seed + 1 instead of
        the initial noise (ComfyUI's "ddim"; see `sampling_pipeline.inpaint_noise`)."""
        return self.name in RANDOM_INPAINT_NOISE_SAMPLERS

    def sample(self, job: SamplingJob) -> tuple[torch.Tensor, torch.Tensor]:
        """(final latent, last denoised prediction), both scaled."""
        note_eager_sampler(job.model, self.name)
        denoiser = _Recorder(job.wrap(GuidedDenoiser(job.model, job.positive, job.negative, job.cfg)))
        out = SAMPLERS[self.name](denoiser, job.x, job.sigmas, job.step, NoiseSource(job.seed))
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
        fast = fast_lcm_sample(job, float(self.gamma))
        if fast is not None:
            return fast
        denoiser = job.wrap(PlainX0Denoiser(job.model, job.positive, job.negative, job.cfg))
        generator = continuing_generator(job.x, job.seed)
        last: dict = {}

        def callback(info: dict) -> None:
            last["denoised"] = info["denoised"]
            job.step(info["i"])

        out = sample_lcm_or_tcd(
            denoiser,
            job.x,
            job.sigmas,
            float(self.gamma),
            callback=callback,
            disable=True,
            generator=generator,
            train_sigmas=lcm_train_sigmas(job.model).to(job.x.device),
        )
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

        out = sample_accelerated(
            denoiser, job.x, job.sigmas, self.kind, callback=callback, disable=True, train_sigmas=table
        )
        return out, last.get("denoised", out)
