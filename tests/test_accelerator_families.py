"""Accelerator families (`lcm_scheduler.families`) against diffusers configured as each family's authors
do (scheduler class from the base model's scheduler config, timestep_spacing, explicit timesteps, eta,
cfg): every family and step count in the table, first as sampling loops (sigma view vs diffusers'
scheduler loop), then through the nodes on the tiny SD1.5 checkpoint vs diffusers' pipeline; the
guard's messages; `auto` detection; the mixer keeping the family."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, TCDScheduler
from safetensors.torch import save_file
from test_lcm_sampling import ACP, SHAPE, TABLE, RandomLinearModel
from test_standalone_lcm import SEED, _diffusers_latent, _empty_latent, _pipeline, sd15  # noqa: F401

from lcm_accel.lcm_scheduler import (
    FAMILIES,
    check_recipe,
    detect_family,
    family_timesteps,
    get_family,
    sample_accelerated,
    sigmas_for_timesteps,
    trailing_timesteps,
)
from lcm_accel.nodes import PACK_NODES as PACK

# the scheduler configs the authors' `from_config(pipe.scheduler.config)` starts from
# (runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json; stabilityai/stable-diffusion-xl-base-1.0)
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    prediction_type="epsilon",
)
SDXL_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
    skip_prk_steps=True,
    interpolation_type="linear",
    timestep_spacing="leading",
    use_karras_sigmas=False,
    sample_max_value=1.0,
    prediction_type="epsilon",
)
CASES = [(key, steps) for key, family in FAMILIES.items() for steps in family.steps]


def authors_scheduler(key: str, steps: int, base: str):
    """The diffusers scheduler as the family's model card sets it up, with the step call's extras."""
    family = get_family(key)
    config = SDXL_SCHEDULER if base == "sdxl" else SD15_SCHEDULER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from_config warns about keys another scheduler class ignores
        if family.sampler == "lcm":
            spacing = {"timestep_spacing": "trailing"} if key == "flash" else {}
            return LCMScheduler.from_config(config, **spacing), {}
        if family.sampler == "tcd":
            return TCDScheduler.from_config(config), {"eta": family.gamma}
        if family.sampler == "ddim":
            return DDIMScheduler.from_config(config, timestep_spacing="trailing"), {}
        prediction = family.unet_prediction.get(steps, "epsilon")
        return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing", prediction_type=prediction), {}


def _set_timesteps(scheduler, key, steps):
    family = get_family(key)
    if family.grid == "custom":
        scheduler.set_timesteps(timesteps=list(family.timesteps[steps]))
    else:
        scheduler.set_timesteps(steps)


def _prediction(key, steps):
    prediction = get_family(key).unet_prediction.get(steps, "epsilon")
    return {"sample": "sample"}.get(prediction, "epsilon")


def _x0_denoiser(model, prediction_type):
    """ComfyUI's EPS / X0 model sampling, written independently: input / sqrt(1 + sigma^2), the
    nearest log-sigma timestep, output to x0."""

    def denoiser(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        t = (sigma.log()[None, :] - TABLE.log()[:, None]).abs().argmin(dim=0)
        out = model(x / (s**2 + 1) ** 0.5, t)
        return out if prediction_type == "sample" else x - out * s

    return denoiser


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
@pytest.mark.parametrize("key, steps", CASES)
def test_family_loop_equals_the_authors_diffusers_scheduler(key, steps, base):
    family = get_family(key)
    if base not in family.bases:
        pytest.skip(f"{family.name} has no {base} LoRA")
    prediction = _prediction(key, steps)
    model = RandomLinearModel(prediction)
    scheduler, extra = authors_scheduler(key, steps, base)
    _set_timesteps(scheduler, key, steps)
    assert scheduler.timesteps.long().tolist() == family_timesteps(family, steps).tolist()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(99)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(latents, t), t)
        step = scheduler.step(out, t, latents, generator=generator, return_dict=False, **extra)
        latents, denoised = step[0], step[1] if family.sampler == "lcm" else None
    reference = denoised if family.sampler == "lcm" else latents

    sigmas = sigmas_for_timesteps(family_timesteps(family, steps), TABLE)
    full = bool(sigmas[0] >= TABLE[-1])  # ComfyUI's start: noise * sqrt(1 + sigma^2) at full denoise, else * sigma
    start = noise * ((1 + sigmas[0] ** 2) ** 0.5 if full else sigmas[0])
    ours = sample_accelerated(
        _x0_denoiser(model, prediction),
        start,
        sigmas,
        family.sampler,
        family.gamma,
        disable=True,
        generator=torch.Generator().manual_seed(99),
        train_sigmas=TABLE,
        pure_noise_starts=family.pure_noise_starts,
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_trailing_grid_is_diffusers_and_ddim_steps_by_t_minus_ratio():
    for steps in (1, 2, 3, 4, 7, 8, 12, 16):
        ddim = DDIMScheduler.from_config(SD15_SCHEDULER, timestep_spacing="trailing")
        ddim.set_timesteps(steps)
        assert trailing_timesteps(steps).tolist() == ddim.timesteps.tolist()
    assert trailing_timesteps(12).tolist()[:3] == [999, 916, 832]  # DDIM steps 999 -> 916 -> 833 (t - 83)


def test_tcd_gamma_zero_is_deterministic_and_tcd_gamma_one_keeps_lcm_noise_order():
    """TCD at gamma 0 draws no noise (two generators give one result); LCMSampler gamma 0 is the LCM
    family's sampler."""
    model = _x0_denoiser(RandomLinearModel(), "epsilon")
    sigmas = sigmas_for_timesteps(family_timesteps(get_family("tcd"), 4), TABLE)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * (1 + sigmas[0] ** 2) ** 0.5
    runs = [
        sample_accelerated(
            model, x, sigmas, "tcd", 0.0, disable=True, generator=torch.Generator().manual_seed(s), train_sigmas=TABLE
        )
        for s in (1, 2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_tcd_gamma_zero_equals_diffusers_tcd_eta_zero():
    model = RandomLinearModel()
    scheduler = TCDScheduler.from_config(SD15_SCHEDULER)
    scheduler.set_timesteps(4)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    latents = noise
    for t in scheduler.timesteps:
        latents = scheduler.step(model(latents, t), t, latents, eta=0.0, return_dict=False)[0]
    sigmas = sigmas_for_timesteps(family_timesteps(get_family("tcd"), 4), TABLE)
    ours = sample_accelerated(
        _x0_denoiser(model, "epsilon"),
        noise * (1 + sigmas[0] ** 2) ** 0.5,
        sigmas,
        "tcd",
        0.0,
        disable=True,
        train_sigmas=TABLE,
    )
    torch.testing.assert_close(ours, latents, rtol=1e-5, atol=1e-5)


# --- through the nodes, on the tiny SD1.5 checkpoint, against diffusers' StableDiffusionPipeline ---


def _family_model(model, key):
    """The MODEL as LCMAcceleratorLoader leaves it, without a LoRA file: the family recorded."""
    from lcm_accel.hosts.accelerator_record import with_accelerator_record

    return with_accelerator_record(model, key, "none", None, "test")


# DMD2's 1-step run is left to the loop test: at t = 399 the random tiny UNet turns the 1e-7 rounding of
# the pure-noise rescale into 1e-3 (measured: unet(noise) vs unet(noise * (1 + s^2)^0.5 / (1 + s^2)^0.5))
PIPELINE_CASES = [
    (key, family.default_steps)
    for key, family in FAMILIES.items()
    if family.default_steps > 1 and "sd15" in family.bases
]  # SDXL-only: the SDXL test below
PIPELINE_CASES += [("hyper_sd_cfg", 12), ("hyper_sd_unified", 1)]


@pytest.mark.parametrize("key, steps", PIPELINE_CASES)
def test_accelerator_ksampler_equals_the_authors_pipeline(sd15, key, steps):  # noqa: F811
    """Through LCMAcceleratorKSampler on the tiny SD1.5 checkpoint. Tolerance 2e-4 of max |latent|: the
    random tiny UNet drives latents to a few hundred and cfg 5 multiplies the cond/uncond rounding, which
    depends on the torch thread count (measured: 2-3e-5 with two threads, 9e-5 with one); a wrong
    timestep or coefficient is off by whole percents (the loop test above holds every entry to 1e-5 on
    O(1) latents)."""
    model, positive, negative, parts = sd15
    family = get_family(key)
    scheduler, extra = authors_scheduler(key, steps, "sd15")
    if family.unet_prediction.get(steps):
        pytest.skip("the x0-prediction UNet variant is checked by the loop test")
    timesteps = {"timesteps": list(family.timesteps[steps])} if family.grid == "custom" else {}
    pipe = _pipeline(parts, model.unet, scheduler)
    cfg = family.cfg
    kwargs = {**extra, **timesteps}
    if timesteps:
        kwargs_steps = None
    else:
        kwargs_steps = steps
    reference = _diffusers_latent(pipe, positive, negative if cfg > 1 else None, kwargs_steps, cfg, **kwargs)
    ours = PACK["LCMAccel_AcceleratorKSampler"]().sample(
        _family_model(model, key), SEED, steps, cfg, positive, negative, _empty_latent(), "from_model", 1.0
    )[0]["samples"]
    error, scale = float((ours - reference).abs().max()), float(reference.abs().max())
    assert error <= 2e-4 * max(scale, 1.0), f"max error {error:.3g} for max |latent| {scale:.3g}"


def test_scheduler_and_sampler_nodes_equal_the_ksampler(sd15):  # noqa: F811
    from lcm_accel.hosts.standalone.nodes_custom_sampling import SamplerCustom

    model, positive, negative, _ = sd15
    recorded = _family_model(model, "hyper_sd")
    sigmas = PACK["LCMAccel_AcceleratorScheduler"]().get_sigmas(recorded, "from_model", 4, 1.0)[0]
    sampler = PACK["LCMAccel_AcceleratorSampler"]().get_sampler(recorded, "from_model")[0]
    custom = SamplerCustom().sample(recorded, True, SEED, 1.0, positive, negative, sampler, sigmas, _empty_latent())[0]
    one_node = PACK["LCMAccel_AcceleratorKSampler"]().sample(
        recorded, SEED, 4, 1.0, positive, negative, _empty_latent()
    )[0]
    torch.testing.assert_close(custom["samples"], one_node["samples"], rtol=0, atol=0)


# --- the guard ---


def test_guard_warns_on_too_high_cfg_and_wrong_steps_and_names_the_recommended_values():
    lightning = get_family("lightning")
    assert check_recipe(lightning, 4, 1.0, 4) == []
    [cfg_message] = check_recipe(lightning, 4, 7.0, 4)
    assert "cfg 7 is above the 1" in cfg_message and "recommended cfg 1, steps 4" in cfg_message
    [steps_message] = check_recipe(lightning, 6, 1.0, 4)
    assert "made for 4 steps, got steps=6" in steps_message and "recommended steps 4" in steps_message
    [outside] = check_recipe(get_family("lcm"), 20, 1.0)
    assert "20 steps is outside" in outside


def test_guard_runs_on_and_logs_one_line_per_problem(sd15, caplog):  # noqa: F811
    model, positive, negative, _ = sd15
    recorded = _family_model(model, "dmd2")
    with caplog.at_level(logging.WARNING, logger="lcm_accel.accelerator"):
        out = PACK["LCMAccel_AcceleratorKSampler"]().sample(
            recorded, SEED, 4, 6.0, positive, negative, _empty_latent()
        )[0]
    assert out["samples"].shape == _empty_latent()["samples"].shape
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("LCMAccel_AcceleratorKSampler: DMD2: cfg 6 is above")


# --- auto detection, the loader and the mixer ---


@pytest.mark.parametrize(
    "name, family, steps",
    [
        ("lcm-lora-sdv1-5.safetensors", "lcm", None),
        ("Hyper-SD15-4steps-lora.safetensors", "hyper_sd", 4),
        ("Hyper-SDXL-1step-lora.safetensors", "hyper_sd_unified", 1),
        ("Hyper-SDXL-12steps-CFG-lora.safetensors", "hyper_sd_cfg", 12),
        ("sdxl_lightning_4step_lora.safetensors", "lightning", 4),
        ("dmd2_sdxl_4step_lora_fp16.safetensors", "dmd2", 4),
        ("pcm_sd15_smallcfg_2step_converted.safetensors", "pcm", 2),
        ("pcm_sdxl_normalcfg_16step_converted.safetensors", "pcm_normalcfg", 16),
        ("TCD-SD15-LoRA.safetensors", "tcd", None),
    ],
)
def test_auto_detects_the_published_file_names(name, family, steps):
    found = detect_family(name)
    assert (found.family, found.lora_steps) == (family, steps)


def test_auto_prefers_metadata_and_refuses_to_guess():
    assert detect_family("my_lora.safetensors", {"lcm_accel.accelerator": "pcm"}).family == "pcm"
    assert detect_family("x.safetensors", {"modelspec.title": "SDXL-Lightning 8-step LoRA"}).family == "lightning"
    assert detect_family("style_watercolor.safetensors") is None


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from lcm_accel.fixtures.demo_models import write_demo_models_dir

    return write_demo_models_dir(tmp_path_factory.mktemp("accelerator_models"))


@pytest.fixture()
def accelerator_loras(demo_root):
    """Two LoRA files in the demo loras folder under published names (the tiny LCM-LoRA's tensors)."""
    loras = demo_root / "models" / "loras"
    from safetensors.torch import load_file

    tensors = load_file(str(loras / "lcm-lora-sdv1-5.safetensors"))
    names = ["Hyper-SD15-4steps-lora.safetensors", "mystery-accel.safetensors"]
    for name in names:
        save_file(tensors, str(loras / name), metadata={"format": "pt"})
    yield names
    for name in names:
        (loras / name).unlink()


def _demo_model(demo_root):
    from lcm_accel.runtime.checkpoints import load_checkpoint
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    paths = ModelPaths(demo_root / "models", demo_root / "input", demo_root / "output")
    with use_model_paths(paths):
        model = load_checkpoint(demo_root / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors")[0]
    return model, paths


def test_loader_auto_records_the_family_and_says_which(demo_root, accelerator_loras, caplog):
    from lcm_accel.hosts.accelerator_record import accelerator_record
    from lcm_accel.runtime.model_paths import use_model_paths

    model, paths = _demo_model(demo_root)
    with use_model_paths(paths), caplog.at_level(logging.WARNING, logger="lcm_accel.accelerator"):
        patched = PACK["LCMAccel_AcceleratorLoader"]().load(model, accelerator_loras[0], "auto", 1.0)[0]
        with pytest.raises(ValueError, match="family auto cannot tell.*mystery-accel"):
            PACK["LCMAccel_AcceleratorLoader"]().load(model, accelerator_loras[1], "auto", 1.0)
        chosen = PACK["LCMAccel_AcceleratorLoader"]().load(model, accelerator_loras[1], "pcm", 1.0)[0]
        # a second accelerator on the same MODEL: warned, the first family kept
        twice = PACK["LCMAccel_AcceleratorLoader"]().load(patched, accelerator_loras[1], "pcm", 1.0)[0]
    assert accelerator_record(patched)["family"] == "hyper_sd" and accelerator_record(patched)["lora_steps"] == 4
    assert accelerator_record(chosen)["family"] == "pcm" and accelerator_record(model) is None
    assert accelerator_record(twice)["family"] == "hyper_sd"
    said = [r.getMessage() for r in caplog.records]
    assert any("is Hyper-SD N-step LoRA (from its file name" in line for line in said)
    assert any("2 accelerator LoRAs in one mix" in line for line in said)


def test_mixer_keeps_the_accelerator_family_beside_a_style_lora(demo_root, accelerator_loras, caplog):
    from lcm_accel.hosts.accelerator_record import accelerator_record
    from lcm_accel.runtime.model_paths import use_model_paths

    model, paths = _demo_model(demo_root)
    mixer = PACK["LCMAccel_AdapterMixer4"]()
    with use_model_paths(paths), caplog.at_level(logging.WARNING, logger="lcm_accel.accelerator"):
        mixed = mixer.mix(model, "style-lora-sd15.safetensors", 0.8, accelerator_loras[0], 1.0)[0]
        assert not caplog.records
        two = mixer.mix(model, "lcm-lora-sdv1-5.safetensors", 1.0, accelerator_loras[0], 1.0)[0]
    assert accelerator_record(mixed)["family"] == "hyper_sd"
    assert accelerator_record(two)["family"] == "lcm"
    assert any(
        "2 accelerator LoRAs in one mix (LCM-LoRA, Hyper-SD N-step LoRA)" in r.getMessage() for r in caplog.records
    )


def test_from_model_without_a_record_names_what_to_do(sd15):  # noqa: F811
    model = sd15[0]
    with pytest.raises(ValueError, match="no accelerator family recorded.*Accelerator LoRA Loader"):
        PACK["LCMAccel_AcceleratorScheduler"]().get_sigmas(model, "from_model", 4, 1.0)


def test_every_family_cites_its_source_and_timesteps_are_in_the_table():
    for family in FAMILIES.values():
        assert family.source.startswith(("huggingface.co/", "github.com/"))
        for steps in family.steps:
            timesteps = family_timesteps(family, steps)
            assert len(timesteps) == steps and timesteps.max() <= 999 and (timesteps[:-1] > timesteps[1:]).all()
    assert ACP.shape == (1000,)


@pytest.fixture(scope="module")
def sdxl():
    from lcm_accel.fixtures import shared_models_root
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
    from lcm_accel.runtime.checkpoints import load_checkpoint

    model, clip, vae = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sdxl.safetensors")
    return model, CORE["CLIPTextEncode"]().encode(clip, "a photo of a cat")[0], vae


@pytest.mark.parametrize("key", ["lightning", "dmd2"])
def test_sdxl_families_equal_the_authors_sdxl_pipeline(sdxl, key):
    """The SDXL-only families on the tiny SDXL checkpoint against StableDiffusionXLPipeline (4 steps, cfg 1)."""
    from diffusers import StableDiffusionXLPipeline

    model, positive, vae = sdxl
    family = get_family(key)
    scheduler, extra = authors_scheduler(key, 4, "sdxl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionXLPipeline(
            vae=vae.vae,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
            unet=model.unet,
            scheduler=scheduler,
        )
    pipe.set_progress_bar_config(disable=True)
    timesteps = {"timesteps": list(family.timesteps[4])} if family.grid == "custom" else {}
    out = pipe(
        prompt_embeds=positive[0][0],
        pooled_prompt_embeds=positive[0][1]["pooled_output"],
        num_inference_steps=None if timesteps else 4,
        guidance_scale=0.0,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
        **timesteps,
        **extra,
    )
    reference = out.images / vae.scaling_factor
    ours = PACK["LCMAccel_AcceleratorKSampler"]().sample(
        _family_model(model, key), SEED, 4, 1.0, positive, positive, _empty_latent(), "from_model", 1.0
    )[0]["samples"]
    error, scale = float((ours - reference).abs().max()), float(reference.abs().max())
    assert error <= 1e-5 * max(scale, 1.0), f"max error {error:.3g} for max |latent| {scale:.3g}"
