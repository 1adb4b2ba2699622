"""The DeepCache node on the standalone host, through the real nodes, against the reference
`DeepCache` package (DeepCacheSDHelper) on diffusers' own sampling loops with the same tiny UNet:
interval 1 is exact, intervals 2 / 3 at a shallow and a deep branch match the reference (LCM with
and without CFG, Euler with CFG), every sampler follows the schedule, and the cache never outlives
its run (other sizes and batch sizes, interruption)."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch

from lcm_accel.fixtures import shared_models_root, tiny_model
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
from lcm_accel.nodes import PACK_NODES as PACK
from lcm_accel.runtime.checkpoints import load_checkpoint

DeepCache = pytest.importorskip("DeepCache")
SEED = 1234
SCALE = 0.18215
SCHEDULE_KW = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.fixture(scope="module")
def sd15():
    model, clip, vae = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors")
    encode = CORE["CLIPTextEncode"]().encode
    return model, encode(clip, "a photo of a cat")[0], encode(clip, "blurry")[0]


def _deepcache(model, interval, branch, start=0.0, end=1.0, schedule="uniform"):
    return PACK["LCMAccel_DeepCache"]().apply(model, interval, branch, start, end, schedule)[0]


def _latent(width=64, height=64, batch=1):
    return CORE["EmptyLatentImage"]().generate(width, height, batch)[0]


def _lcm(model, positive, negative, steps, cfg, latent=None):
    return PACK["LCMAccel_KSampler"]().sample(
        model, SEED, steps, cfg, positive, negative, latent or _latent(), 50, 0.0, 1.0
    )[0]["samples"]


def _ksampler(model, positive, negative, sampler, steps=6, cfg=3.0, latent=None):
    return CORE["KSampler"]().sample(
        model, SEED, steps, cfg, sampler, "normal", positive, negative, latent or _latent()
    )[0]["samples"]


def _with_reference_cache(unet, scheduler, interval, branch, run):
    """Run `run()` with DeepCacheSDHelper on `unet` (it reads the step from scheduler.timesteps).
    Callers pass a copy of the shared UNet: `disable()` leaves instance `forward`s behind."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=unet, scheduler=scheduler))
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        with torch.no_grad():
            return run()
    finally:
        helper.disable()


def _reference_lcm(unet, positive, negative, steps, cfg, interval, branch):
    """diffusers' LCM pipeline (one batched cond+uncond call per step) under DeepCacheSDHelper."""
    from diffusers import LCMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    unet = copy.deepcopy(unet)
    parts = tiny_model("sd15")
    tokenizer = CLIPTokenizer.from_pretrained(str(shared_models_root() / "models" / "tokenizers" / "clip"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline(
            unet=unet,
            scheduler=LCMScheduler(),
            vae=parts.vae,
            text_encoder=parts.text_encoders[0],
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    negative_kw = {"negative_prompt_embeds": negative[0][0]} if cfg > 1 else {}

    def run():
        return (
            pipe(
                prompt_embeds=positive[0][0],
                num_inference_steps=steps,
                guidance_scale=cfg,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(SEED),
                output_type="latent",
                **negative_kw,
            ).images
            / SCALE
        )

    return _with_reference_cache(unet, pipe.scheduler, interval, branch, run)


def _reference_euler(unet, positive, negative, steps, cfg, interval, branch):
    """diffusers' Euler scheduler in a CFG loop (cond and uncond batched) under DeepCacheSDHelper,
    started as ComfyUI starts (noise * sqrt(1 + sigma_max^2)); alphabar in float64 as ComfyUI."""
    from diffusers import EulerDiscreteScheduler

    unet = copy.deepcopy(unet)
    scheduler = EulerDiscreteScheduler(**SCHEDULE_KW, timestep_spacing="linspace")
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()
    scheduler.set_timesteps(steps)
    context = torch.cat([negative[0][0], positive[0][0]])

    def run():
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
        latents = noise * float(scheduler.sigmas[0] ** 2 + 1) ** 0.5
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            uncond, cond = unet(x_in, t, encoder_hidden_states=context).sample.chunk(2)
            latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents).prev_sample
        return latents / SCALE

    return _with_reference_cache(unet, scheduler, interval, branch, run)


def _relative_error(ours, reference) -> float:
    return float((ours - reference).abs().max()) / max(float(reference.abs().max()), 1.0)


@pytest.mark.parametrize("sampler", ["lcm_cfg1", "lcm_cfg1.5", "euler"])
def test_interval_one_is_bit_identical(sd15, sampler):
    model, positive, negative = sd15
    off = _deepcache(model, 1, 0)
    if sampler == "euler":
        assert torch.equal(_ksampler(off, positive, negative, "euler"), _ksampler(model, positive, negative, "euler"))
    else:
        cfg = float(sampler.removeprefix("lcm_cfg"))
        assert torch.equal(_lcm(off, positive, negative, 4, cfg), _lcm(model, positive, negative, 4, cfg))


@pytest.fixture(scope="module")
def uncached(sd15):
    """The route's latents without DeepCache (computed once per route)."""
    model, positive, negative = sd15
    found = {}

    def get(route):
        if route not in found:
            found[route] = _route(model, positive, negative, route)
        return found[route]

    return get


def _route(model, positive, negative, route):
    if route == "euler_cfg3":  # 10 steps: ComfyUI's "normal" and diffusers' "linspace" share integer timesteps
        return _ksampler(model, positive, negative, "euler", 10)
    return _lcm(model, positive, negative, 8, float(route.removeprefix("lcm_cfg")))


@pytest.mark.parametrize(
    "route, interval, branch",
    [("lcm_cfg1", 3, 0), ("lcm_cfg1.5", 2, 0), ("lcm_cfg1.5", 3, 5), ("euler_cfg3", 2, 0), ("euler_cfg3", 3, 5)],
)
def test_matches_deepcache_reference_package(sd15, uncached, route, interval, branch):
    """Same latents as DeepCacheSDHelper within 1e-4 of the latent scale, while caching moves them
    by far more than that (so the check cannot pass with caching off). Our CFG passes are separate
    UNet calls with separate features; the reference batches cond and uncond in one call."""
    model, positive, negative = sd15
    ours = _route(_deepcache(model, interval, branch), positive, negative, route)
    if route == "euler_cfg3":
        reference = _reference_euler(model.unet, positive, negative, 10, 3.0, interval, branch)
    else:
        reference = _reference_lcm(
            model.unet, positive, negative, 8, float(route.removeprefix("lcm_cfg")), interval, branch
        )
    error, effect = _relative_error(ours, reference), _relative_error(uncached(route), reference)
    print(f"{route} interval {interval} branch {branch}: relative error {error:.2e}, caching effect {effect:.2e}")
    assert error <= 1e-4
    assert effect > 100 * max(error, 1e-6)


def _full_calls(unet, fn) -> int:
    """How many UNet calls ran the middle block (partial calls skip it)."""
    calls = []
    handle = unet.mid_block.resnets[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "ddim", "lcm"])
def test_every_sampler_follows_the_schedule(sd15, sampler):
    """Interval 2 on 6 steps: steps 0, 2, 4 run the deep part for the positive and the negative pass,
    steps 1, 3, 5 never do (calls are placed on the schedule by their sigma)."""
    model, positive, negative = sd15
    cached = _deepcache(model, 2, 0)
    assert _full_calls(model.unet, lambda: _ksampler(model, positive, negative, sampler, steps=6)) == 2 * 6
    assert _full_calls(model.unet, lambda: _ksampler(cached, positive, negative, sampler, steps=6)) == 2 * 3


def test_schedule_window_and_non_uniform(sd15):
    model, positive, negative = sd15
    calls = lambda m: _full_calls(model.unet, lambda: _lcm(m, positive, negative, 8, 1.0))  # noqa: E731
    assert calls(_deepcache(model, 4, 0)) == 2  # steps 0 and 4
    assert calls(_deepcache(model, 4, 0, start=0.5)) == 4 + 1  # steps 0-3 always full, then step 4
    assert calls(_deepcache(model, 4, 0, end=0.5)) == 1 + 4  # step 0, then steps 4-7 always full
    assert calls(_deepcache(model, 2, 0, schedule="non-uniform")) == 4


def test_cache_lives_with_the_run(sd15):
    """A run at another size and batch size in between changes nothing; the UNet is restored after
    every run, also after an interrupted one; the MODEL without DeepCache stays exact."""
    from lcm_accel.runtime.interrupt import Interrupted, clear_interrupt, request_interrupt

    model, positive, negative = sd15
    cached = _deepcache(model, 3, 0)
    first = _lcm(cached, positive, negative, 6, 1.5)
    _lcm(cached, positive, negative, 6, 1.5, latent=_latent(48, 40, 2))
    assert torch.equal(_lcm(cached, positive, negative, 6, 1.5), first)
    assert not [name for name, module in model.unet.named_modules() if "forward" in module.__dict__]

    calls = []

    def interrupt_on_third_call(*_):
        calls.append(1)
        if len(calls) == 3:
            request_interrupt()

    handle = model.unet.conv_in.register_forward_hook(interrupt_on_third_call)
    try:
        with pytest.raises(Interrupted):
            _lcm(cached, positive, negative, 6, 1.0)
    finally:
        handle.remove()
        clear_interrupt()
    assert not [name for name, module in model.unet.named_modules() if "forward" in module.__dict__]
    assert torch.equal(_lcm(cached, positive, negative, 6, 1.5), first)


def test_bad_settings_are_refused_naming_the_input(sd15):
    from lcm_accel.runtime.model_types import ModelHost

    model, _, _ = sd15
    node = PACK["LCMAccel_DeepCache"]()
    sdxl = ModelHost(unet=tiny_model("sdxl").unet, family="sdxl")  # 3 levels: branches 0-8
    with pytest.raises(ValueError, match="cache_depth=9 does not fit this model: .*choose 0..8"):
        node.apply(sdxl, 3, 9, 0.0, 1.0, "uniform")
    with pytest.raises(ValueError, match="cache_depth must be a number in \\[0, 11\\], got 12"):
        node.apply(model, 3, 12, 0.0, 1.0, "uniform")
    with pytest.raises(ValueError, match="cache_interval"):
        node.apply(model, 0, 0, 0.0, 1.0, "uniform")
    with pytest.raises(ValueError, match="start_percent"):
        node.apply(model, 3, 0, 0.8, 0.2, "uniform")
    with pytest.raises(ValueError, match="schedule"):
        node.apply(model, 3, 0, 0.0, 1.0, "quadratic")
    assert "deepcache" not in model.model_options
