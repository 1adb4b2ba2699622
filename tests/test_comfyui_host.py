"""The ComfyUI host inside real ComfyUI, in-process (skipped unless COMFYUI_PATH names a checkout).

A small SD1.5-detectable UNet (320 channels, context 768) is loaded by ComfyUI's UNETLoader; the
checks run in ComfyUI's interpreter (tests/comfyui_host_checks.py) and are asserted here:
- the mixer's ONE combined patch per weight gives the weights of two chained core LoraLoaders,
  composes with a core LoraLoader before it, and ComfyUI restores the base weights after;
- a LoRA for another family is refused naming the file, and the input MODEL keeps its patch list;
- LCMKSampler equals SamplerCustom + LCMScheduler + LCMSampler bit for bit (LCM, LCM with CFG, TCD);
- our sampler gives the same latents on our LCM model sampling, on ComfyUI's ModelSamplingDiscrete
  "lcm", and on a plain eps MODEL (the boundary condition is undone / applied exactly once);
- ComfyUI's own KSampler "lcm" runs on our LCM model; ComfyUI's interrupt stops our sampler.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_server import comfyui_checkout, run_checks, sd15_unet_base

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya
    from lcm_accel.fixtures.tiny_models import build_tiny_sdxl

    base = tmp_path_factory.mktemp("comfyui_host")
    unet, models = sd15_unet_base(base, REPO)
    targets = lora_targets(unet)
    write_kohya(models / "loras" / "lcm.safetensors", random_factors(targets, 8, seed=1, scale=0.05), alpha=8.0)
    write_kohya(models / "loras" / "style.safetensors", random_factors(targets, 4, seed=2, scale=0.05), alpha=2.0)
    sdxl_targets = lora_targets(build_tiny_sdxl(0).unet)
    write_kohya(models / "loras" / "sdxl_lcm.safetensors", random_factors(sdxl_targets, 4, seed=3), alpha=4.0)
    return run_checks(CHECKOUT, REPO / "tests" / "comfyui_host_checks.py", base)


def test_pack_nodes_register_in_comfyui(checks):
    """Every node under its LCMAccel_ id; this ComfyUI (0.3.64) has no node replacement, so the old ids
    load as deprecated copies (no other pack here holds DeepCache / LCMScheduler)."""
    from lcm_accel.nodes import OLD_NODE_IDS, PACK_NODES

    assert checks["registered"]["nodes"] == sorted([*PACK_NODES, *OLD_NODE_IDS])
    deprecated = [name for name, cls in PACK_NODES.items() if getattr(cls, "DEPRECATED", False)]
    assert deprecated == ["LCMAccel_AdapterMixer4"]
    assert checks["registered"]["deprecated"] == sorted([*OLD_NODE_IDS, *deprecated])


def test_mixer_patch_equals_two_chained_core_loaders(checks):
    mix = checks["lora_mix"]
    print("mixer vs chained LoraLoaders:", mix)
    assert mix["changed_mixer"] == mix["changed_chained"] == mix["mixer_keys"] > 0
    assert mix["patches_per_key"] == 1  # one combined patch per weight, not one per adapter
    assert mix["comfy_patches"] == 0  # written in place, not through ComfyUI's backup-and-replace
    assert mix["mixer_vs_chained"] <= 1e-5 * max(1.0, mix["delta_scale"])
    assert mix["composed_vs_chained"] <= 1e-5 * max(1.0, mix["delta_scale"])
    assert mix["base_restored"] == 0.0 and mix["input_patches"] == 0


def test_lora_for_another_family_is_refused_and_changes_nothing(checks):
    bad = checks["bad_lora"]
    assert bad["raised"] == "LoraPatchError" and "sdxl_lcm.safetensors" in bad["message"]
    assert "sdxl" in bad["message"] and bad["unchanged"]


def test_lcm_sampling_routes_agree(checks):
    s = checks["sampling"]
    print("sampling:", s)
    assert s["model_sampling"] == "LCMSamplingEps"
    assert s["sigmas"][-1] == 0.0 and len(s["sigmas"]) == 5
    assert all(diff == 0.0 for diff in s["lcmksampler_vs_samplercustom"].values())
    assert s["ours_on_comfy_lcm_rel"] < 1e-4 and s["ours_on_plain_rel"] < 1e-4
    assert s["builtin_finite"] and s["builtin_std"] > 0


def test_comfyui_interrupt_stops_our_sampler(checks):
    assert checks["interrupt"]["raised"] == "InterruptProcessingException"
