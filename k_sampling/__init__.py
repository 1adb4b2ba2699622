"""k_sampling: ComfyUI's samplers and schedulers for discrete-time (eps / v / x0) models, pure torch.

Host-free (no ComfyUI, no diffusers pipelines). The public API a host uses:

    from .k_sampling import (DiscreteSigmas, DistilledSigmas, SAMPLERS, SAMPLER_NAMES,
                             SCHEDULERS, SCHEDULER_NAMES, NoiseSource, ksampler_sigmas)

    table = DiscreteSigmas(schedule)              # or DistilledSigmas for LCM; zsnr=True for ZSNR
    sigmas = ksampler_sigmas(table, scheduler_name, steps, denoise, sampler=sampler_name)
    x = start latent noised for sigmas[0]         # noise * sqrt(1 + sigma_max^2) for a full denoise
    out = SAMPLERS[sampler_name](denoiser, x, sigmas, step, NoiseSource(seed), **options)

* `denoiser(x, sigma_batch) -> x0` (the k-diffusion D(x; sigma), guidance applied inside);
  `step(i)` is called once per step (progress, interruption) or may be None.
* `NoiseSource(seed)` is all the noise a sampler needs: ancestral samplers, DDPM and LCM draw
  Gaussian noise from a CPU generator seeded with `seed` (ComfyUI's default noise sampler, on
  the CPU); the SDE samplers (dpmpp_sde, dpmpp_2m_sde[_heun], dpmpp_3m_sde) build a
  `torchsde.BrownianTree` over [min positive sigma, max sigma] with `seed` as its entropy, on the
  CPU, as ComfyUI does, so a seed gives ComfyUI's image (torchsde: `pip install torchsde`).
  Deterministic samplers accept and ignore it (pass None if you like).
* `options`: eta, s_noise (ancestral / SDE samplers), r (dpmpp_sde), solver_type (dpmpp_2m_sde),
  order (lms) with ComfyUI's defaults.
* `ksampler_sigmas(..., sampler=name)` applies KSampler's "one step more, drop the penultimate
  sigma" rule for dpm_2, dpm_2_ancestral and uni_pc; `calculate_sigmas` is the bare scheduler.
* Names follow ComfyUI's order: SAMPLER_NAMES = euler, euler_ancestral, heun, dpm_2,
  dpm_2_ancestral, lms, dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m, dpmpp_2m_sde, dpmpp_2m_sde_heun,
  dpmpp_3m_sde, ddpm, lcm, ddim (= euler), uni_pc (bh1), uni_pc_bh2; SCHEDULER_NAMES = simple,
  sgm_uniform, karras, exponential, ddim_uniform, beta, normal, linear_quadratic, kl_optimal.
"""

from .noise import BrownianTreeNoise, NoiseSource, seeded_noise_sampler
from .samplers import (
    BROWNIAN_SAMPLERS,
    RANDOM_INPAINT_NOISE_SAMPLERS,
    SAMPLER_NAMES,
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    ancestral_step,
    to_d,
)
from .schedulers import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULER_NAMES,
    SCHEDULERS,
    calculate_sigmas,
    exponential_sigmas,
    karras_sigmas,
    ksampler_sigmas,
)
from .sigma_table import DiscreteSigmas, DistilledSigmas, make_betas, rescale_zero_terminal_snr

__all__ = [
    "BROWNIAN_SAMPLERS",
    "BrownianTreeNoise",
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "DiscreteSigmas",
    "DistilledSigmas",
    "NoiseSource",
    "RANDOM_INPAINT_NOISE_SAMPLERS",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "STOCHASTIC_SAMPLERS",
    "ancestral_step",
    "calculate_sigmas",
    "exponential_sigmas",
    "karras_sigmas",
    "ksampler_sigmas",
    "make_betas",
    "rescale_zero_terminal_snr",
    "seeded_noise_sampler",
    "to_d",
]
