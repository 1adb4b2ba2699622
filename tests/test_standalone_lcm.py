"""LCM / TCD sampling on the standalone host against diffusers' pipelines on the same tiny UNet,
prompt embeddings and seed: LCMKSampler (txt2img, cfg 1 / 1.5, 1-8 steps), a full LCM UNet with
the guidance embedding, TCD, img2img, and the SamplerCustom route."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import (
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    TCDScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTokenizer

from lcm_accel.fixtures import shared_models_root, tiny_model
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
from lcm_accel.hosts.standalone.lcm_denoiser import model_lcm_sigmas
from lcm_accel.hosts.standalone.nodes_custom_sampling import BasicScheduler, KSamplerSelect, SamplerCustom
from lcm_accel.hosts.standalone.sampler_values import LCMTCDSampler
from lcm_accel.hosts.standalone.sampling_pipeline import lcm_ksample
from lcm_accel.nodes import PACK_NODES as PACK
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.model_types import ModelHost

SEED = 1234
SCALE = 0.18215  # SD1.5 latent scaling: diffusers' latents are scaled, our LATENT is not


@pytest.fixture(scope="module")
def sd15():
    root = shared_models_root()
    model, clip, vae = load_checkpoint(root / "models" / "checkpoints" / "tiny_sd15.safetensors")
    encode = CORE["CLIPTextEncode"]().encode
    positive, negative = encode(clip, "a photo of a cat")[0], encode(clip, "blurry")[0]
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "models" / "tokenizers" / "clip"))
    parts = dict(
        vae=vae.vae,
        text_encoder=tiny_model("sd15").text_encoders[0],
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return model, positive, negative, parts


def _pipeline(parts, unet, scheduler, cls=StableDiffusionPipeline):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls(unet=unet, scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _empty_latent():
    return CORE["EmptyLatentImage"]().generate(64, 64, 1)[0]


def _diffusers_latent(pipe, positive, negative, steps, cfg, **kwargs):
    """diffusers' final latent, unscaled to our LATENT convention."""
    negative_kw = {} if negative is None else {"negative_prompt_embeds": negative[0][0]}
    out = pipe(
        prompt_embeds=positive[0][0],
        num_inference_steps=steps,
        guidance_scale=cfg,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
        **negative_kw,
        **kwargs,
    )
    return out.images / SCALE


def _assert_close_latents(ours, reference):
    """Max abs error within 3e-5 of max |latent| (random tiny UNets give latents of a few hundred; the
    rounding depends on the torch thread count: img2img at cfg 1.5 measured 1.3e-5 with one thread)."""
    error = float((ours - reference).abs().max())
    scale = float(reference.abs().max())
    assert error <= 3e-5 * max(scale, 1.0), f"max error {error:.3g} for max |latent| {scale:.3g}"


def _lcm_ksampler(model, positive, negative, steps, cfg, gamma=0.0, latent=None, denoise=1.0):
    return PACK["LCMAccel_KSampler"]().sample(
        model, SEED, steps, cfg, positive, negative, latent or _empty_latent(), 50, gamma, denoise
    )[0]["samples"]


@pytest.mark.parametrize("cfg", [1.0, 1.5])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_ksampler_equals_diffusers_pipeline(sd15, cfg, steps):
    model, positive, negative, parts = sd15
    reference = _diffusers_latent(_pipeline(parts, model.unet, LCMScheduler()), positive, negative, steps, cfg)
    _assert_close_latents(_lcm_ksampler(model, positive, negative, steps, cfg), reference)


@pytest.mark.parametrize("mode", ["lcm_lora_loader", "model_sampling_discrete"])
def test_lcm_sampling_mode_gets_the_plain_x0_no_double_boundary(sd15, mode):
    """A MODEL switched to "lcm" sampling samples exactly like the plain one with our samplers."""
    model, positive, negative, _ = sd15
    if mode == "lcm_lora_loader":
        from lcm_accel.hosts import get_host

        switched = get_host().set_lcm_sampling(model)
    else:
        switched = CORE["ModelSamplingDiscrete"]().patch(model, "lcm")[0]
    assert switched.sampling_type == "lcm" and model.sampling_type == "eps"
    plain = _lcm_ksampler(model, positive, negative, 4, 1.5)
    torch.testing.assert_close(_lcm_ksampler(switched, positive, negative, 4, 1.5), plain, rtol=0, atol=0)


@pytest.mark.parametrize("cfg, passes_per_step", [(1.0, 1), (1.5, 2)])
def test_cfg_one_makes_one_unet_pass_per_step(sd15, cfg, passes_per_step):
    model, positive, negative, _ = sd15
    calls = []
    handle = model.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        _lcm_ksampler(model, positive, negative, 4, cfg)
    finally:
        handle.remove()
    assert len(calls) == 4 * passes_per_step


def test_tcd_equals_diffusers_tcd_scheduler(sd15):
    model, positive, negative, parts = sd15
    pipe = _pipeline(parts, model.unet, TCDScheduler())
    for steps, cfg in ((4, 1.0), (2, 1.5)):
        reference = _diffusers_latent(pipe, positive, negative, steps, cfg, eta=0.3)
        _assert_close_latents(_lcm_ksampler(model, positive, negative, steps, cfg, gamma=0.3), reference)


@pytest.fixture(scope="module")
def full_lcm_unet():
    """The tiny SD1.5 UNet with a guidance-embedding input (time_cond_proj_dim), as a full LCM has."""
    base = tiny_model("sd15").unet
    unet = UNet2DConditionModel.from_config(base.config, time_cond_proj_dim=32)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in unet.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05 + (param == 1).float())
    return unet.eval()


@pytest.mark.parametrize("cfg", [1.0, 8.0])
def test_full_lcm_unet_equals_latent_consistency_pipeline(sd15, full_lcm_unet, cfg):
    _, positive, negative, parts = sd15
    model = ModelHost(unet=full_lcm_unet, family="sd15")
    pipe = _pipeline(parts, full_lcm_unet, LCMScheduler(), cls=LatentConsistencyModelPipeline)
    reference = _diffusers_latent(pipe, positive, None, 4, cfg)
    calls = []
    handle = full_lcm_unet.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        ours = _lcm_ksampler(model, positive, negative, 4, cfg)
    finally:
        handle.remove()
    assert len(calls) == 4  # the guidance is embedded: no negative pass
    _assert_close_latents(ours, reference)


def test_img2img_equals_hand_assembled_diffusers_loop(sd15):
    """denoise 0.6: LCM strength 0.6, the latent noised to the first timestep, then the LCM loop."""
    model, positive, negative, _ = sd15
    image_latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3)) * 4
    ours = _lcm_ksampler(model, positive, negative, 4, 1.5, latent={"samples": image_latent}, denoise=0.6)

    scheduler = LCMScheduler()
    scheduler.set_timesteps(4, strength=0.6)
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn((1, 4, 8, 8), generator=generator)
    latents = scheduler.add_noise(image_latent * SCALE, noise, scheduler.timesteps[:1])
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model.unet(latents, t, encoder_hidden_states=positive[0][0]).sample
            uncond = model.unet(latents, t, encoder_hidden_states=negative[0][0]).sample
            eps = uncond + 1.5 * (eps - uncond)
            latents, denoised = scheduler.step(eps, t, latents, generator=generator, return_dict=False)
    _assert_close_latents(ours, denoised / SCALE)


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_sampler_custom_route_equals_lcm_ksampler(sd15, gamma):
    model, positive, negative, _ = sd15
    sigmas = PACK["LCMAccel_Scheduler"]().get_sigmas(model, 4, 50, 1.0)[0]
    sampler = PACK["LCMAccel_Sampler"]().get_sampler(gamma)[0]
    output, denoised = SamplerCustom().sample(
        model, True, SEED, 1.5, positive, negative, sampler, sigmas, _empty_latent()
    )
    torch.testing.assert_close(
        output["samples"], _lcm_ksampler(model, positive, negative, 4, 1.5, gamma=gamma), rtol=0, atol=0
    )
    if gamma == 0.0:  # LCM's last step returns its denoised prediction
        torch.testing.assert_close(denoised["samples"], output["samples"], rtol=0, atol=0)


def test_lcm_scheduler_sigmas_are_diffusers_timesteps_of_the_model_table(sd15):
    model = sd15[0]
    scheduler = LCMScheduler()
    scheduler.set_timesteps(4, original_inference_steps=50, strength=0.6)
    acp = scheduler.alphas_cumprod[scheduler.timesteps]
    expected = torch.cat([((1 - acp) / acp) ** 0.5, torch.zeros(1)])
    sigmas = PACK["LCMAccel_Scheduler"]().get_sigmas(model, 4, 50, 0.6)[0]
    torch.testing.assert_close(sigmas, expected, rtol=1e-6, atol=0)


def test_sampler_custom_with_core_sampler_equals_ksampler(sd15):
    """KSamplerSelect + BasicScheduler through SamplerCustom == KSampler (same noise, same sampler)."""
    model, positive, negative, _ = sd15
    sigmas = BasicScheduler().get_sigmas(model, "normal", 3, 1.0)[0]
    sampler = KSamplerSelect().get_sampler("euler_ancestral")[0]
    output, _ = SamplerCustom().sample(model, True, SEED, 2.0, positive, negative, sampler, sigmas, _empty_latent())
    expected = CORE["KSampler"]().sample(
        model, SEED, 3, 2.0, "euler_ancestral", "normal", positive, negative, _empty_latent(), 1.0
    )[0]["samples"]
    torch.testing.assert_close(output["samples"], expected, rtol=0, atol=0)


def test_bad_values_are_refused_with_the_argument_named(sd15):
    model = sd15[0]
    with pytest.raises(ValueError, match="gamma"):
        LCMTCDSampler(1.5)
    with pytest.raises(ValueError, match="sampler_name"):
        KSamplerSelect().get_sampler("nope")
    zsnr = CORE["ModelSamplingDiscrete"]().patch(model, "eps", zsnr=True)[0]
    with pytest.raises(NotImplementedError, match="zsnr"):
        model_lcm_sigmas(zsnr, 4)
    with pytest.raises(TypeError, match="SAMPLER"):
        SamplerCustom().sample(model, True, 0, 1.0, [], [], "lcm", torch.tensor([1.0, 0.0]), _empty_latent())


def test_lcm_ksample_leaves_the_input_latent_untouched(sd15):
    model, positive, negative, _ = sd15
    latent = {"samples": torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(9))}
    before = latent["samples"].clone()
    lcm_ksample(model, SEED, 2, 1.0, positive, negative, latent, denoise=0.5)
    torch.testing.assert_close(latent["samples"], before, rtol=0, atol=0)
