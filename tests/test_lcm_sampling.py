"""LCM / TCD sampling loops against diffusers' schedulers and pipelines, in both views."""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import (
    LatentConsistencyModelImg2ImgPipeline,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    TCDScheduler,
    UNet2DConditionModel,
)

from lcm_accel.lcm_scheduler import (
    add_noise,
    clip_x0,
    consistency_scalings,
    denoiser_from_vp_model,
    lcm_guidance_embedding,
    lcm_sigmas,
    lcm_timesteps,
    make_alphas_cumprod,
    sample_lcm,
    sample_lcm_vp,
    sample_tcd,
    sample_tcd_vp,
    sigmas_from_alphas_cumprod,
    tcd_sigmas,
    tcd_timesteps,
    threshold_x0,
    ve_from_vp,
)

SHAPE = (2, 4, 8, 8)
TOL = dict(rtol=0, atol=1e-5)
ACP = make_alphas_cumprod()
TABLE = sigmas_from_alphas_cumprod(ACP)


class RandomLinearModel:
    """A fixed timestep-view "UNet": the Bayes-optimal prediction for standard-normal data
    (eps = sqrt(1-acp) x, v = 0, x0 = sqrt(acp) x), plus a seeded random linear map of x and a
    timestep-dependent bias, so that every prediction and every latent stays O(1)."""

    def __init__(self, prediction_type: str = "epsilon", seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        n = SHAPE[1] * SHAPE[2] * SHAPE[3]
        self.weight = torch.randn(n, n, generator=g) / n**0.5
        self.bias = torch.randn(SHAPE[1:], generator=g)
        self.prediction_type = prediction_type

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        acp = ACP[torch.as_tensor(t).long()].reshape(-1, 1, 1, 1)
        optimal = {"epsilon": (1 - acp).sqrt() * x, "v_prediction": 0 * x, "sample": acp.sqrt() * x}
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
        mixed = (x.flatten(1) @ self.weight.T).view_as(x)
        return optimal[self.prediction_type] + 0.2 * mixed + 0.1 * torch.cos(t / 150.0) * self.bias


def comfy_style_denoiser(model, prediction_type):
    """What ComfyUI's EPS / V_PREDICTION model sampling does, written independently of the package:
    input scaled by 1/sqrt(1+sigma^2), timestep = nearest log-sigma, output converted to x0."""

    def denoiser(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        t = (sigma.log()[None, :] - TABLE.log()[:, None]).abs().argmin(dim=0)
        out = model(x / (s**2 + 1) ** 0.5, t)
        if prediction_type == "epsilon":
            return x - out * s
        return x / (s**2 + 1) - out * s / (s**2 + 1) ** 0.5

    return denoiser


def diffusers_loop(scheduler, model, latents, generator, **step_kwargs):
    """The LCM/TCD pipelines' loop: model, then scheduler.step; returns the last `denoised`."""
    for t in scheduler.timesteps:
        latents, denoised = scheduler.step(
            model(latents, t), t, latents, generator=generator, return_dict=False, **step_kwargs
        )
    return latents if isinstance(scheduler, TCDScheduler) else denoised


def _gen(seed=1234):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_txt2img_matches_diffusers_in_both_views(prediction_type, steps):
    model = RandomLinearModel(prediction_type)
    scheduler = LCMScheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(steps)
    generator = _gen()
    reference = diffusers_loop(scheduler, model, torch.randn(SHAPE, generator=generator), generator)

    generator = _gen()
    timesteps = lcm_timesteps(steps)
    ours = sample_lcm_vp(
        model,
        torch.randn(SHAPE, generator=generator),
        timesteps,
        ACP,
        prediction_type,
        generator=generator,
        disable=True,
    )
    torch.testing.assert_close(ours, reference, **TOL)

    for denoiser in (comfy_style_denoiser(model, prediction_type), denoiser_from_vp_model(model, ACP, prediction_type)):
        generator = _gen()
        sigmas = lcm_sigmas(steps)
        x = torch.randn(SHAPE, generator=generator) * (1 + sigmas[0] ** 2) ** 0.5  # ComfyUI's txt2img start
        ours_sigma = sample_lcm(denoiser, x, sigmas, generator=generator, disable=True)
        torch.testing.assert_close(ours_sigma, reference, **TOL)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps, strength", [(1, 0.6), (2, 0.3), (4, 0.6), (8, 0.6), (4, 1.0)])
def test_lcm_img2img_matches_diffusers_in_both_views(prediction_type, steps, strength):
    model = RandomLinearModel(prediction_type, seed=1)
    image_latent = torch.randn(SHAPE, generator=_gen(7))
    scheduler = LCMScheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(steps, strength=strength)
    generator = _gen()
    start = scheduler.add_noise(image_latent, torch.randn(SHAPE, generator=generator), scheduler.timesteps[:1])
    reference = diffusers_loop(scheduler, model, start, generator)

    timesteps = lcm_timesteps(steps, strength=strength)
    generator = _gen()
    x = add_noise(image_latent, torch.randn(SHAPE, generator=generator), timesteps[0], ACP)
    ours = sample_lcm_vp(model, x, timesteps, ACP, prediction_type, generator=generator, disable=True)
    torch.testing.assert_close(ours, reference, **TOL)

    generator = _gen()
    sigmas = lcm_sigmas(steps, strength=strength)
    x = image_latent + sigmas[0] * torch.randn(SHAPE, generator=generator)  # ComfyUI's img2img start
    ours_sigma = sample_lcm(comfy_style_denoiser(model, prediction_type), x, sigmas, generator=generator, disable=True)
    torch.testing.assert_close(ours_sigma, reference, **TOL)


@pytest.mark.parametrize(
    "config, postprocess",
    [
        (dict(prediction_type="sample"), None),
        (dict(clip_sample=True, clip_sample_range=0.8), functools.partial(clip_x0, clip_range=0.8)),
        (dict(thresholding=True, sample_max_value=1.5), functools.partial(threshold_x0, max_value=1.5)),
        (dict(timestep_scaling=4.0), None),
    ],
)
def test_lcm_options_match_diffusers(config, postprocess):
    model = RandomLinearModel(config.get("prediction_type", "epsilon"), seed=2)
    scheduler = LCMScheduler(**config)
    scheduler.set_timesteps(4)
    generator = _gen()
    reference = diffusers_loop(scheduler, model, 2 * torch.randn(SHAPE, generator=generator), generator)
    generator = _gen()
    ours = sample_lcm_vp(
        model,
        2 * torch.randn(SHAPE, generator=generator),
        lcm_timesteps(4),
        ACP,
        config.get("prediction_type", "epsilon"),
        generator=generator,
        disable=True,
        x0_postprocess=postprocess,
        timestep_scaling=config.get("timestep_scaling", 10.0),
    )
    torch.testing.assert_close(ours, reference, **TOL)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_boundary_condition_where_it_matters_matches_in_both_views(prediction_type):
    """With timestep_scaling 0.05 and low timesteps c_skip is far from 0 (at 10.0 it is < 1e-3 on
    the usual schedules), so this pins down which latent the skip term uses in each view."""
    custom, scaling = [999, 759, 259, 39, 19], 0.05
    assert consistency_scalings(custom[-1], scaling)[0] > 0.2
    model = RandomLinearModel(prediction_type, seed=5)
    scheduler = LCMScheduler(prediction_type=prediction_type, timestep_scaling=scaling)
    scheduler.set_timesteps(timesteps=custom)
    generator = _gen()
    reference = diffusers_loop(scheduler, model, torch.randn(SHAPE, generator=generator), generator)

    generator = _gen()
    timesteps = lcm_timesteps(None, timesteps=custom)
    ours = sample_lcm_vp(
        model,
        torch.randn(SHAPE, generator=generator),
        timesteps,
        ACP,
        prediction_type,
        generator=generator,
        disable=True,
        timestep_scaling=scaling,
    )
    torch.testing.assert_close(ours, reference, **TOL)

    generator = _gen()
    sigmas = lcm_sigmas(None, timesteps=custom)
    x = torch.randn(SHAPE, generator=generator) * (1 + sigmas[0] ** 2) ** 0.5
    ours_sigma = sample_lcm(
        comfy_style_denoiser(model, prediction_type),
        x,
        sigmas,
        generator=generator,
        disable=True,
        timestep_scaling=scaling,
    )
    torch.testing.assert_close(ours_sigma, reference, **TOL)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_tcd_matches_diffusers_in_both_views(gamma, steps):
    model = RandomLinearModel(seed=3)
    scheduler = TCDScheduler()
    scheduler.set_timesteps(steps)
    generator = _gen()
    reference = diffusers_loop(scheduler, model, torch.randn(SHAPE, generator=generator), generator, eta=gamma)

    generator = _gen()
    ours = sample_tcd_vp(
        model,
        torch.randn(SHAPE, generator=generator),
        tcd_timesteps(steps),
        ACP,
        gamma,
        generator=generator,
        disable=True,
    )
    torch.testing.assert_close(ours, reference, **TOL)

    generator = _gen()
    sigmas = tcd_sigmas(steps)
    x = torch.randn(SHAPE, generator=generator) * (1 + sigmas[0] ** 2) ** 0.5
    ours_sigma = sample_tcd(
        comfy_style_denoiser(model, "epsilon"), x, sigmas, generator=generator, gamma=gamma, disable=True
    )
    torch.testing.assert_close(ours_sigma, reference, **TOL)


def test_tcd_v_prediction_img2img_full_grid_matches_diffusers():
    model = RandomLinearModel("v_prediction", seed=4)
    image_latent = torch.randn(SHAPE, generator=_gen(8))
    scheduler = TCDScheduler(prediction_type="v_prediction")
    scheduler.set_timesteps(4, original_inference_steps=50, strength=0.6)
    generator = _gen()
    start = scheduler.add_noise(image_latent, torch.randn(SHAPE, generator=generator), scheduler.timesteps[:1])
    reference = diffusers_loop(scheduler, model, start, generator, eta=0.5)

    timesteps = tcd_timesteps(4, 50, 0.6, full_train_grid=True)
    generator = _gen()
    x = add_noise(image_latent, torch.randn(SHAPE, generator=generator), timesteps[0], ACP)
    ours = sample_tcd_vp(model, x, timesteps, ACP, 0.5, "v_prediction", generator=generator, disable=True)
    torch.testing.assert_close(ours, reference, **TOL)

    generator = _gen()
    sigmas = tcd_sigmas(4, 50, 0.6, full_train_grid=True)
    x = ve_from_vp(add_noise(image_latent, torch.randn(SHAPE, generator=generator), timesteps[0], ACP), sigmas[0])
    ours_sigma = sample_tcd(
        denoiser_from_vp_model(model, ACP, "v_prediction"), x, sigmas, generator=generator, gamma=0.5, disable=True
    )
    torch.testing.assert_close(ours_sigma, reference, **TOL)


def test_noise_sampler_replaces_generator_and_callback_reports_each_step():
    model = RandomLinearModel()
    sigmas = lcm_sigmas(4)
    x = torch.randn(SHAPE, generator=_gen(5)) * (1 + sigmas[0] ** 2) ** 0.5
    by_generator = sample_lcm(comfy_style_denoiser(model, "epsilon"), x, sigmas, generator=_gen(), disable=True)

    generator, calls, seen = _gen(), [], []

    def noise_sampler(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return torch.randn(SHAPE, generator=generator)

    by_sampler = sample_lcm(
        comfy_style_denoiser(model, "epsilon"),
        x,
        sigmas,
        noise_sampler=noise_sampler,
        callback=seen.append,
        disable=True,
    )
    torch.testing.assert_close(by_sampler, by_generator, rtol=0, atol=0)
    assert calls == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(3)]  # no noise after the last step
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert all(d["sigma"] == d["sigma_hat"] == sigmas[d["i"]] for d in seen)
    torch.testing.assert_close(seen[-1]["denoised"], by_sampler, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise_sampler"):
        sample_lcm(
            comfy_style_denoiser(model, "epsilon"),
            x,
            sigmas,
            noise_sampler=noise_sampler,
            generator=_gen(),
            disable=True,
        )


def test_bad_sampler_arguments_name_the_argument():
    model, x = RandomLinearModel(), torch.randn(SHAPE)
    with pytest.raises(ValueError, match="prediction_type"):
        sample_lcm_vp(model, x, lcm_timesteps(2), ACP, "flow", disable=True)
    with pytest.raises(ValueError, match="prediction_type"):
        denoiser_from_vp_model(model, ACP, "eps")
    for gamma in (-0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            sample_tcd_vp(model, x, tcd_timesteps(2), ACP, gamma, disable=True)
        with pytest.raises(ValueError, match="gamma"):
            sample_tcd(comfy_style_denoiser(model, "epsilon"), x, tcd_sigmas(2), gamma=gamma, disable=True)


def _tiny_lcm_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=2,
        time_cond_proj_dim=16,
    ).eval()


def _pipeline(cls, unet):
    pipe = cls(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=LCMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet_as_vp_model(unet, prompt_embeds, guidance_scale):
    w_embedding = lcm_guidance_embedding(guidance_scale, prompt_embeds.shape[0], unet.config.time_cond_proj_dim)
    return lambda x, t: unet(x, t, encoder_hidden_states=prompt_embeds, timestep_cond=w_embedding).sample


@torch.no_grad()
def test_full_lcm_pipelines_with_guidance_embedding_match():
    """End to end with a tiny full-LCM UNet (time_cond_proj_dim): the diffusers txt2img and img2img
    pipelines vs our loops driven by the same UNet and `lcm_guidance_embedding`."""
    unet, prompt_embeds = _tiny_lcm_unet(), torch.randn(2, 5, 8, generator=_gen(9))
    model = _unet_as_vp_model(unet, prompt_embeds, guidance_scale=3.0)

    reference = _pipeline(LatentConsistencyModelPipeline, unet)(
        prompt_embeds=prompt_embeds,
        num_inference_steps=4,
        guidance_scale=3.0,
        height=64,
        width=64,
        generator=_gen(),
        output_type="latent",
    ).images
    generator = _gen()
    ours = sample_lcm_vp(
        model, torch.randn(SHAPE, generator=generator), lcm_timesteps(4), ACP, generator=generator, disable=True
    )
    torch.testing.assert_close(ours, reference, **TOL)
    generator = _gen()
    sigmas = lcm_sigmas(4)
    x = torch.randn(SHAPE, generator=generator) * (1 + sigmas[0] ** 2) ** 0.5
    ours_sigma = sample_lcm(denoiser_from_vp_model(model, ACP), x, sigmas, generator=generator, disable=True)
    # A random UNet is no denoiser: its x0 reaches |x| ~ 20, so float32 rounding of the two views
    # differs by ~1e-6 relative; compare relatively here (the O(1) tests above use atol 1e-5).
    torch.testing.assert_close(ours_sigma, reference, rtol=1e-5, atol=1e-5)

    image_latent = torch.randn(SHAPE, generator=_gen(10))
    reference = _pipeline(LatentConsistencyModelImg2ImgPipeline, unet)(
        image=image_latent,
        prompt_embeds=prompt_embeds,
        num_inference_steps=3,
        strength=0.6,
        guidance_scale=3.0,
        generator=_gen(),
        output_type="latent",
    ).images
    timesteps = lcm_timesteps(3, strength=0.6)
    generator = _gen()
    x = add_noise(image_latent, torch.randn(SHAPE, generator=generator), timesteps[0], ACP)
    ours = sample_lcm_vp(model, x, timesteps, ACP, generator=generator, disable=True)
    torch.testing.assert_close(ours, reference, **TOL)


def test_invert_consistency_output_recovers_x0_and_refuses_timestep_zero():
    from lcm_accel.lcm_scheduler import consistency_output, invert_consistency_output

    g = torch.Generator().manual_seed(3)
    x0, sample = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g) * 5
    t = torch.tensor([1, 999])  # per-sample timesteps: c_skip from ~0.2 down to ~6e-9
    denoised = consistency_output(x0, sample, t)
    assert not torch.allclose(denoised[0], x0[0], atol=1e-3)  # the boundary really moved sample 0
    torch.testing.assert_close(invert_consistency_output(denoised, sample, t), x0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="timestep 0"):
        invert_consistency_output(denoised, sample, torch.tensor([0, 999]))
