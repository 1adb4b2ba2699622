"""The standalone host's core nodes against ComfyUI 0.3.64's own (skipped unless COMFYUI_PATH names a
checkout): the same inputs go through ComfyUI's nodes in its interpreter
(tests/comfyui_core_nodes_checks.py) and through ours here.

- interfaces: input names and order, types, combo values, defaults and ranges, outputs, category
  and function name of every node this file covers;
- resizing (LatentUpscale / By, ImageScale / By / ToTotalPixels, every method and crop),
  RepeatLatentBatch, LatentFromBatch, SetLatentNoiseMask, VAEEncodeForInpaint's pixels and mask,
  LoadImageMask's channels;
- sampling on an SD1.5-detectable UNet file that both hosts' UNETLoader read: ConditioningSetTimestepRange + ConditioningCombine,
  strength-weighted entries, ConditioningZeroOut, SDTurboScheduler's sigmas and an SD-Turbo run,
  SamplerCustomAdvanced with RandomNoise / DisableNoise and CFGGuider / BasicGuider;
- VAELoader's TAESD pair: decode and encode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from comfyui_server import comfyui_checkout, run_checks

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
REL_TOLERANCE = 1e-4


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inpaint_mask = torch.zeros(1, 35, 34)
    inpaint_mask[:, 10:20, 12:18] = 1.0
    inpaint_mask[:, 25:27, 3:9] = 0.6
    return {
        "latent": torch.randn(2, 4, 8, 12, generator=g),
        "image": torch.rand(1, 20, 30, 3, generator=g),
        "batch": torch.randn(4, 4, 4, 6, generator=g),
        "batch_masks": torch.rand(3, 1, 4, 6, generator=g),
        "mask": torch.rand(2, 16, 24, generator=g),
        "inpaint_pixels": torch.rand(1, 70, 67, 3, generator=g),
        "inpaint_mask": inpaint_mask,
        "cond_a": torch.randn(1, 77, 768, generator=g),
        "cond_b": torch.randn(1, 77, 768, generator=g),
        "cond_n": torch.randn(1, 77, 768, generator=g),
        "sample_latent": torch.randn(1, 4, 16, 16, generator=g),
        "taesd_latent": torch.randn(1, 4, 8, 8, generator=g),
        "taesd_pixels": torch.rand(1, 64, 64, 3, generator=g),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image
    from safetensors.torch import save_file
    from test_core_nodes_vae_loader import random_taesd, write_taesd

    from lcm_accel.fixtures.comfyui_models import sd15_unet
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm

    base = tmp_path_factory.mktemp("comfyui_core_nodes")
    torch.manual_seed(0)
    unet = sd15_unet().eval().requires_grad_(False)
    (base / "models" / "diffusion_models").mkdir(parents=True)
    state = {k: v.contiguous() for k, v in unet_to_ldm(unet.state_dict(), 1).items()}
    save_file(state, str(base / "models" / "diffusion_models" / "unet.safetensors"))
    (base / "models" / "vae_approx").mkdir()
    write_taesd(random_taesd(7), base / "models" / "vae_approx", "taesd")
    (base / "custom_nodes").mkdir()
    (base / "input").mkdir()
    rgba = np.random.default_rng(1).integers(0, 256, size=(24, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(base / "input" / "mask.png")
    inputs = _inputs()
    save_file(inputs, str(base / "core_inputs.safetensors"))
    checks = run_checks(CHECKOUT, REPO / "tests" / "comfyui_core_nodes_checks.py", base)
    from safetensors.torch import load_file

    return base, unet, inputs, checks, load_file(str(base / "core_outputs.safetensors"))


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert tuple(ours.shape) == tuple(theirs.shape), (tuple(ours.shape), tuple(theirs.shape))
    return float((ours.float() - theirs).abs().max()) / max(float(theirs.abs().max()), 1e-12)


def test_interfaces_equal_comfyuis(setup):
    from comfyui_core_nodes_checks import NODES as CHECKED
    from comfyui_core_nodes_checks import interface

    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    base, _, _, checks, _ = setup
    theirs = checks["interfaces"]["nodes"]
    assert sorted(theirs) == sorted(CHECKED)
    with use_model_paths(ModelPaths(base / "models", input_dir=base / "input")):
        for name in CHECKED:
            ours = interface(NODE_CLASS_MAPPINGS[name])
            if name == "VAELoader":  # ComfyUI always offers its pixel-space VAE, not an SD1.5 / SDXL one
                theirs[name]["inputs"]["vae_name"][1].remove("pixel_space")
            for key in ("inputs", "order", "return_types", "category"):
                assert ours[key] == theirs[name][key], f"{name}.{key}: ours {ours[key]} ComfyUI {theirs[name][key]}"
            if not theirs[name]["v3"]:  # ComfyUI's V3 nodes all run through one generic function
                assert ours["function"] == theirs[name]["function"], name


def test_resizing_equals_comfyuis(setup):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES

    _, _, inputs, _, theirs = setup
    latent, image = {"samples": inputs["latent"]}, inputs["image"]
    worst = {}
    for method in LATENT_METHODS:
        for crop in ("disabled", "center"):
            ours = NODES["LatentUpscale"]().upscale(latent, method, 200, 104, crop)[0]["samples"]
            worst[f"LatentUpscale.{method}.{crop}"] = _rel(ours, theirs[f"resize.LatentUpscale.{method}.{crop}"])
        ours = NODES["LatentUpscaleBy"]().upscale(latent, method, 1.7)[0]["samples"]
        worst[f"LatentUpscaleBy.{method}"] = _rel(ours, theirs[f"resize.LatentUpscaleBy.{method}"])
    for method in IMAGE_METHODS:
        for crop in ("disabled", "center"):
            ours = NODES["ImageScale"]().upscale(image, method, 45, 31, crop)[0]
            worst[f"ImageScale.{method}.{crop}"] = _rel(ours, theirs[f"resize.ImageScale.{method}.{crop}"])
        ours = NODES["ImageScaleBy"]().upscale(image, method, 1.3)[0]
        worst[f"ImageScaleBy.{method}"] = _rel(ours, theirs[f"resize.ImageScaleBy.{method}"])
        ours = NODES["ImageScaleToTotalPixels"]().upscale(image, method, 0.01)[0]
        worst[f"ImageScaleToTotalPixels.{method}"] = _rel(ours, theirs[f"resize.ImageScaleToTotalPixels.{method}"])
    print("resizing, max relative difference to ComfyUI:", max(worst.values()), max(worst, key=worst.get))
    assert all(value <= REL_TOLERANCE for value in worst.values()), {k: v for k, v in worst.items() if v > 0}


def test_latent_batches_and_masks_equal_comfyuis(setup):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES

    _, _, inputs, checks, theirs = setup
    latent = {"samples": inputs["batch"], "noise_mask": inputs["batch_masks"], "batch_index": [5, 6, 7, 8]}
    ours = {
        "repeat": NODES["RepeatLatentBatch"]().repeat(latent, 3)[0],
        "from": NODES["LatentFromBatch"]().frombatch(latent, 2, 3)[0],
        "plain": NODES["LatentFromBatch"]().frombatch({"samples": inputs["batch"]}, 1, 2)[0],
        "masked": NODES["SetLatentNoiseMask"]().set_mask({"samples": inputs["batch"]}, inputs["mask"])[0],
    }
    for key, value in ours.items():
        for field in ("samples", "noise_mask"):
            assert (field in value) == (f"batches.{key}.{field}" in theirs), (key, field)
            if field in value:
                assert torch.equal(value[field], theirs[f"batches.{key}.{field}"]), (key, field)
    for key, indices in checks["batches"]["indices"].items():
        assert ours[key].get("batch_index") == indices, key


def test_inpaint_preparation_and_mask_files_equal_comfyuis(setup, monkeypatch):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
    from lcm_accel.runtime import vae_codec
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    base, _, inputs, _, theirs = setup
    monkeypatch.setattr(vae_codec, "encode", lambda vae, pixels: pixels.clone())  # what the VAE is given
    for grow in (0, 1, 6, 7):
        (out,) = NODES["VAEEncodeForInpaint"]().encode(None, inputs["inpaint_pixels"], inputs["inpaint_mask"], grow)
        assert torch.equal(out["samples"], theirs[f"inpaint.{grow}.pixels"]), grow
        assert torch.equal(out["noise_mask"], theirs[f"inpaint.{grow}.mask"]), grow
    with use_model_paths(ModelPaths(base / "models", input_dir=base / "input")):
        for channel in ("alpha", "red", "green", "blue"):
            (mask,) = NODES["LoadImageMask"]().load_image("mask.png", channel)
            assert torch.equal(mask, theirs[f"inpaint.mask_png.{channel}"]), channel


def test_conditioning_ranges_turbo_and_advanced_sampling_equal_comfyuis(setup):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    base, _, inputs, _, theirs = setup
    with use_model_paths(ModelPaths(base / "models", input_dir=base / "input")):
        (model,) = NODES["UNETLoader"]().load_unet("unet.safetensors", "default")  # the file ComfyUI loads
    assert model.family == "sd15"
    a, b, negative = ([[inputs[k], {}]] for k in ("cond_a", "cond_b", "cond_n"))
    latent = {"samples": inputs["sample_latent"]}
    ranged_a = NODES["ConditioningSetTimestepRange"]().set_range(a, 0.0, 0.4)[0]
    ranged_b = NODES["ConditioningSetTimestepRange"]().set_range(b, 0.4, 1.0)[0]
    split = NODES["ConditioningCombine"]().combine(ranged_a, ranged_b)[0]
    weighted = NODES["ConditioningCombine"]().combine(a, [[inputs["cond_b"], {"strength": 0.5}]])[0]
    zero = NODES["ConditioningZeroOut"]().zero_out(negative)[0]
    ks = NODES["KSampler"]().sample
    results = {
        "split": ks(model, 3, 4, 3.0, "euler", "normal", split, negative, latent)[0]["samples"],
        "weighted": ks(model, 4, 4, 2.5, "dpmpp_2m", "karras", weighted, negative, latent)[0]["samples"],
        "zero": ks(model, 5, 3, 4.0, "euler", "simple", a, zero, latent)[0]["samples"],
    }
    for steps, denoise in ((1, 1.0), (4, 1.0), (2, 0.5), (10, 0.3)):
        results[f"turbo.{steps}.{denoise}"] = NODES["SDTurboScheduler"]().get_sigmas(model, steps, denoise)[0]
    turbo_sigmas = NODES["SDTurboScheduler"]().get_sigmas(model, 2, 1.0)[0]
    ancestral = NODES["KSamplerSelect"]().get_sampler("euler_ancestral")[0]
    noise = NODES["RandomNoise"]().get_noise(9)[0]
    advanced = NODES["SamplerCustomAdvanced"]().sample
    guider = NODES["CFGGuider"]().get_guider(model, a, negative, 1.0)[0]
    out = advanced(noise, guider, ancestral, turbo_sigmas, latent)
    results["turbo_run"], results["turbo_run_denoised"] = out[0]["samples"], out[1]["samples"]
    sigmas = NODES["BasicScheduler"]().get_sigmas(model, "karras", 4, 0.7)[0]
    guider = NODES["CFGGuider"]().get_guider(model, split, zero, 5.0)[0]
    results["advanced_cfg"] = advanced(noise, guider, ancestral, sigmas, latent)[0]["samples"]
    basic = NODES["BasicGuider"]().get_guider(model, weighted)[0]
    off = NODES["DisableNoise"]().get_noise()[0]
    euler = NODES["KSamplerSelect"]().get_sampler("euler")[0]
    results["advanced_basic"] = advanced(off, basic, euler, sigmas, latent)[0]["samples"]
    differences = {key: _rel(value, theirs[f"sampling.{key}"]) for key, value in results.items()}
    print("sampling, relative difference to ComfyUI:", {k: f"{v:.2e}" for k, v in differences.items()})
    assert all(value <= REL_TOLERANCE for value in differences.values()), differences


def test_taesd_through_vae_loader_equals_comfyuis(setup):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
    from lcm_accel.runtime.vae_codec import decode, encode

    base, _, inputs, _, theirs = setup
    with use_model_paths(ModelPaths(base / "models", input_dir=base / "input")):
        (vae,) = NODES["VAELoader"]().load_vae("taesd")
    decoded = _rel(decode(vae, inputs["taesd_latent"]), theirs["taesd.decoded"])
    encoded = _rel(encode(vae, inputs["taesd_pixels"]), theirs["taesd.encoded"])
    print(f"TAESD relative difference to ComfyUI: decode {decoded:.2e}, encode {encoded:.2e}")
    assert decoded <= REL_TOLERANCE and encoded <= REL_TOLERANCE
