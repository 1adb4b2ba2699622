"""KSampler / KSamplerAdvanced / ModelSamplingDiscrete on the standalone host against diffusers'
schedulers (Euler, Euler ancestral, LCM) where ComfyUI's and diffusers' schedules coincide,
and against hand-derived references where they do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.hosts.standalone.sampling_pipeline import prepare_noise
from lcm_accel.k_sampling import SAMPLERS, DiscreteSigmas, calculate_sigmas
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.model_types import SD_NOISE_SCHEDULE

SEED = 1234
SCHEDULE_KW = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _make(cls, **kw):
    """A diffusers scheduler whose alphabar table is computed in float64, as ComfyUI does
    (diffusers' float32 cumprod drifts ~1e-5 relative over 1000 steps, which a random
    UNet amplifies beyond the 1e-4 tolerance)."""
    scheduler = cls(**SCHEDULE_KW, **kw)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()
    return scheduler


@pytest.fixture(scope="module")
def sd15():
    root = shared_models_root()
    model, clip, _ = load_checkpoint(root / "models" / "checkpoints" / "tiny_sd15.safetensors")
    encode = NODES["CLIPTextEncode"]().encode
    return model, encode(clip, "a photo of a cat")[0], encode(clip, "blurry")[0]


def _assert_close_latents(ours, reference):
    error = float((ours - reference).abs().max())
    scale = float(reference.abs().max())
    print(f"max error {error:.3g}, max |latent| {scale:.3g}, relative {error / scale:.3g}")
    assert error <= 1e-5 * max(scale, 1.0)


def _ksampler(model, positive, negative, sampler, scheduler="normal", steps=4, cfg=3.0, latent=None, denoise=1.0):
    latent = latent or NODES["EmptyLatentImage"]().generate(64, 64, 1)[0]
    return NODES["KSampler"]().sample(model, SEED, steps, cfg, sampler, scheduler, positive, negative, latent, denoise)[
        0
    ]


def _diffusers_loop(unet, scheduler, positive, negative, cfg, generator=None, added=False, vp_start=False):
    """A diffusers sampling loop. Its start differs from ComfyUI's in one documented way: for a
    full denoise ComfyUI scales the noise by sqrt(1 + sigma_max^2) (the VP-consistent start),
    diffusers' Euler schedulers by sigma_max; the loop uses ComfyUI's (for LCM both are N(0, 1))."""
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    if vp_start:
        latents = noise
    else:
        latents = noise * (1.0 + float(scheduler.sigmas.max()) ** 2) ** 0.5

    def eps_for(entry, t, latents):
        kwargs = {}
        if added is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": entry[1]["pooled_output"],
                "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),  # h, w, crop top/left, target h/w
            }
        return unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=entry[0], **kwargs).sample

    with torch.no_grad():
        for t in scheduler.timesteps:
            # one UNet call per prompt (not a batch of 2): batched matmuls round differently and a
            # random tiny UNet amplifies that far beyond float32 noise
            eps = eps_for(positive[0], t, latents)
            if cfg != 1.0:
                uncond = eps_for(negative[0], t, latents)
                eps = uncond + cfg * (eps - uncond)
            out = scheduler.step(eps, t, latents, generator=generator)
            latents = out.prev_sample
    return latents


def test_prepare_noise_is_comfyui_seeded_cpu_noise():
    latent = torch.zeros(3, 4, 2, 2)
    torch.manual_seed(SEED)
    full = torch.randn(3, 4, 2, 2)
    assert torch.equal(prepare_noise(latent, SEED), full)
    # batch_index: noise of those positions of a batch drawn one latent at a time
    assert torch.equal(prepare_noise(latent[:2], SEED, [2, 0]), full[[2, 0]])


def test_schedules_match_diffusers_where_they_coincide():
    from diffusers import EulerDiscreteScheduler

    table = DiscreteSigmas(SD_NOISE_SCHEDULE)

    def diffusers_sigmas(steps, **kw):
        scheduler = EulerDiscreteScheduler(**SCHEDULE_KW, **kw)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.float()

    check = lambda ours, ref: torch.testing.assert_close(ours, ref, rtol=2e-5, atol=1e-6)
    check(calculate_sigmas(table, "normal", 10), diffusers_sigmas(10, timestep_spacing="linspace"))
    check(calculate_sigmas(table, "simple", 4), diffusers_sigmas(4, timestep_spacing="trailing"))
    check(
        calculate_sigmas(table, "karras", 6), diffusers_sigmas(6, timestep_spacing="linspace", use_karras_sigmas=True)
    )
    check(
        calculate_sigmas(table, "exponential", 6),
        diffusers_sigmas(6, timestep_spacing="linspace", use_exponential_sigmas=True),
    )


def test_sgm_uniform_interpolates_log_sigma_at_fractional_timesteps():
    from diffusers import EulerDiscreteScheduler

    alphas_cumprod = EulerDiscreteScheduler(**SCHEDULE_KW).alphas_cumprod.double().numpy()
    log_sigmas = np.log(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
    timesteps = np.linspace(999, 0, 5)[:-1]  # 999, 749.25, 499.5, 249.75
    expected = np.append(np.exp(np.interp(timesteps, np.arange(1000), log_sigmas)), 0.0)
    ours = calculate_sigmas(DiscreteSigmas(SD_NOISE_SCHEDULE), "sgm_uniform", 4)
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float32), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_euler_ksampler_matches_diffusers_euler(sd15, sampler):
    from diffusers import EulerDiscreteScheduler

    model, positive, negative = sd15
    out = _ksampler(model, positive, negative, sampler)
    scheduler = _make(EulerDiscreteScheduler, timestep_spacing="linspace")
    scheduler.set_timesteps(4)
    reference = _diffusers_loop(model.unet, scheduler, positive, negative, 3.0) / 0.18215
    _assert_close_latents(out["samples"], reference)


def test_euler_ancestral_matches_diffusers_with_comfyui_noise_seeding(sd15):
    from diffusers import EulerAncestralDiscreteScheduler

    model, positive, negative = sd15
    out = _ksampler(model, positive, negative, "euler_ancestral")
    scheduler = _make(EulerAncestralDiscreteScheduler, timestep_spacing="linspace")
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(SEED)  # ComfyUI seeds its ancestral noise with the seed
    reference = _diffusers_loop(model.unet, scheduler, positive, negative, 3.0, generator=generator) / 0.18215
    _assert_close_latents(out["samples"], reference)


def test_lcm_sampling_matches_diffusers_lcm_scheduler(sd15):
    from diffusers import LCMScheduler

    model, positive, negative = sd15
    (lcm_model,) = NODES["ModelSamplingDiscrete"]().patch(model, "lcm", False)
    assert model.sampling_type == "eps" and lcm_model.unet is model.unet
    out = _ksampler(lcm_model, positive, negative, "lcm", scheduler="simple", cfg=1.0)
    scheduler = _make(LCMScheduler, original_inference_steps=50)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]
    generator = torch.Generator().manual_seed(SEED)
    reference = (
        _diffusers_loop(model.unet, scheduler, positive, negative, 1.0, generator=generator, vp_start=True) / 0.18215
    )
    _assert_close_latents(out["samples"], reference)


def test_sdxl_euler_matches_diffusers_with_size_conditioning():
    from diffusers import EulerDiscreteScheduler

    root = shared_models_root()
    model, clip, _ = load_checkpoint(root / "models" / "checkpoints" / "tiny_sdxl.safetensors")
    (positive,) = NODES["CLIPTextEncode"]().encode(clip, "a photo of a dog")
    (negative,) = NODES["CLIPTextEncode"]().encode(clip, "")
    out = _ksampler(model, positive, negative, "euler", steps=4, cfg=2.0)  # 4 steps: integer timesteps
    scheduler = _make(EulerDiscreteScheduler, timestep_spacing="linspace")
    scheduler.set_timesteps(4)
    reference = _diffusers_loop(model.unet, scheduler, positive, negative, 2.0, added=True) / 0.13025
    _assert_close_latents(out["samples"], reference)


def test_advanced_split_and_denoise_follow_comfyui_step_semantics(sd15):
    model, positive, negative = sd15
    latent = NODES["EmptyLatentImage"]().generate(64, 64, 1)[0]
    advanced = NODES["KSamplerAdvanced"]().sample
    full = _ksampler(model, positive, negative, "euler")["samples"]
    first = advanced(model, "enable", SEED, 4, 3.0, "euler", "normal", positive, negative, latent, 0, 2, "enable")[0]
    second = advanced(
        model, "disable", SEED, 4, 3.0, "euler", "normal", positive, negative, first, 2, 10000, "disable"
    )[0]
    torch.testing.assert_close(second["samples"], full, rtol=0, atol=1e-4)

    start = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))}
    img2img = _ksampler(model, positive, negative, "euler", steps=2, latent=start, denoise=0.5)["samples"]
    late = advanced(model, "enable", SEED, 4, 3.0, "euler", "normal", positive, negative, start, 2, 10000, "disable")[0]
    torch.testing.assert_close(img2img, late["samples"], rtol=0, atol=1e-5)
    past_end = advanced(
        model, "enable", SEED, 4, 3.0, "euler", "normal", positive, negative, start, 4, 10000, "disable"
    )[0]
    assert torch.equal(past_end["samples"], start["samples"])


def test_dpmpp_2m_matches_diffusers_dpm_solver_on_the_same_sigmas():
    """Host-free: an exact Gaussian-data denoiser driven through our DPM++(2M) (VE space) and
    through diffusers' DPMSolverMultistepScheduler (VP space, epsilon output) on its sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    s = 0.5  # data ~ N(0, s^2): D(x, sigma) = x s^2 / (s^2 + sigma^2)
    denoiser = lambda x, sigma: x * s**2 / (s**2 + sigma.reshape(-1, 1, 1, 1) ** 2)
    scheduler = DPMSolverMultistepScheduler(
        **SCHEDULE_KW, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True, final_sigmas_type="zero"
    )
    scheduler.set_timesteps(8)
    sigmas = scheduler.sigmas.float()
    x_start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ours = SAMPLERS["dpmpp_2m"](denoiser, x_start.clone(), sigmas, lambda i: None, None)

    sample = x_start / (sigmas[0] ** 2 + 1) ** 0.5
    for i, t in enumerate(scheduler.timesteps):
        x_ve = sample * (sigmas[i] ** 2 + 1) ** 0.5
        eps = (x_ve - denoiser(x_ve, sigmas[i : i + 1])) / sigmas[i]
        sample = scheduler.step(eps, t, sample).prev_sample
    torch.testing.assert_close(ours, sample, rtol=1e-5, atol=1e-5)
    euler = SAMPLERS["euler"](denoiser, x_start.clone(), sigmas, lambda i: None, None)
    assert float((euler - sample).abs().max()) > 1e-3  # the comparison can tell solvers apart


def test_progress_per_step_and_interrupt(sd15):
    from lcm_accel.runtime.interrupt import Interrupted, clear_interrupt, request_interrupt
    from lcm_accel.runtime.progress import use_progress_hook

    model, positive, negative = sd15
    seen = []
    with use_progress_hook(lambda node, value, total: seen.append((value, total))):
        _ksampler(model, positive, negative, "euler", steps=3, cfg=1.0)
    assert seen[-1] == (3, 3) and len({v for v, _ in seen}) == 3
    request_interrupt()
    try:
        with pytest.raises(Interrupted):
            _ksampler(model, positive, negative, "euler", steps=3, cfg=1.0)
    finally:
        clear_interrupt()


def test_unknown_sampler_and_model_sampling_are_refused(sd15):
    model, positive, negative = sd15
    with pytest.raises(ValueError, match="sampler_name 'euler_cfg_pp'"):
        _ksampler(model, positive, negative, "euler_cfg_pp")
    with pytest.raises(ValueError, match="sampling 'edm'"):
        NODES["ModelSamplingDiscrete"]().patch(model, "edm")
