"""CLIPLoader / DualCLIPLoader and the SDXL refiner against ComfyUI 0.3.64 (skipped unless
COMFYUI_PATH names a checkout); ComfyUI's side is tests/comfyui_core_nodes_models_checks.py.

- interfaces: CLIPLoader's and DualCLIPLoader's inputs, combo values, defaults and outputs;
- a full-size CLIP-L file (random weights) through CLIPLoader + CLIPTextEncode (and clip skip -2):
  the same embeddings;
- a checkpoint whose UNet ComfyUI detects as SDXLRefiner: ComfyUI's denoised output for a
  refiner conditioning (aesthetic score, width, height from CLIPTextEncodeSDXLRefiner) and for a
  negative one with its default score equals ours (the UNet fed `refiner_added_conds`);
- SDXL base + refiner, the hand-over of tests/data/shared_workflows/sdxl_base_refiner.json in 5
  steps (`LCM_ACCEL_COMFYUI_FAMILIES` without sdxl leaves it out): `build_comfyui_sdxl`'s prompts
  through CLIPTextEncodeSDXL, KSamplerAdvanced on the base returning its leftover noise, then on
  the refiner from that step with add_noise disabled. Each latent equals ComfyUI's; the fixture's
  conditioning stays near a trained CLIP's scale (at rms ~28 the CFG-8 run turned chaotic and
  float32 rounding of the two hosts' attention kernels grew to a third of the latent).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from comfyui_server import comfyui_checkout, run_checks

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent
REL_TOLERANCE = 1e-4
PROMPT = "a (red:1.3) house by the sea, [fog]"
FAMILIES = tuple(os.environ.get("LCM_ACCEL_COMFYUI_FAMILIES", "sd15,sdxl").split(","))
MAX_CONDITIONING_RMS = 5.0  # a trained CLIP's penultimate layer: about 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel

    from lcm_accel.fixtures.comfyui_models import (
        STORAGE_DTYPE,
        TOKENIZER_FILES,
        build_comfyui_sdxl,
        build_comfyui_sdxl_refiner,
        clip_l_config,
    )
    from lcm_accel.fixtures.tiny_models import randomize, save_ldm_checkpoint, text_encoder_file_state

    base = tmp_path_factory.mktemp("comfyui_models_part")
    models = base / "models"
    (models / "text_encoders").mkdir(parents=True)
    encoder = CLIPTextModel(clip_l_config())
    randomize(encoder, torch.Generator().manual_seed(5))
    state = {k: v.to(STORAGE_DTYPE) for k, v in text_encoder_file_state(encoder, "transformers").items()}
    save_file(state, str(models / "text_encoders" / "clip_l.safetensors"))
    del encoder
    save_ldm_checkpoint(build_comfyui_sdxl_refiner(3), models / "checkpoints" / "refiner.safetensors")
    if "sdxl" in FAMILIES:
        save_ldm_checkpoint(build_comfyui_sdxl(0), models / "checkpoints" / "sdxl.safetensors")
        (models / "tokenizers" / "clip").mkdir(parents=True)
        for name in TOKENIZER_FILES:  # both hosts tokenize with ComfyUI's files
            shutil.copyfile(CHECKOUT / "comfy" / "sd1_tokenizer" / name, models / "tokenizers" / "clip" / name)
    (base / "custom_nodes").mkdir()
    g = torch.Generator().manual_seed(0)
    inputs = {
        "x": torch.randn(1, 4, 16, 24, generator=g) * 3.0,
        "cond": torch.randn(1, 77, 1280, generator=g),
        "pooled": torch.randn(1, 1280, generator=g),
        "sigma": torch.tensor([2.5]),
    }
    save_file(inputs, str(base / "models_inputs.safetensors"))
    checks = run_checks(CHECKOUT, REPO / "tests" / "comfyui_core_nodes_models_checks.py", base)
    yield base, inputs, checks, load_file(str(base / "models_outputs.safetensors"))
    (models / "checkpoints" / "sdxl.safetensors").unlink(missing_ok=True)  # 3.5 GB


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert tuple(ours.shape) == tuple(theirs.shape), (tuple(ours.shape), tuple(theirs.shape))
    return float((ours.float() - theirs).abs().max()) / max(float(theirs.abs().max()), 1e-12)


def _paths(base: Path):
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    return use_model_paths(ModelPaths(base / "models"))


def test_clip_loader_interfaces_equal_comfyuis(setup):
    from comfyui_core_nodes_checks import interface
    from comfyui_core_nodes_models_checks import NODES as CHECKED

    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS

    base, _, checks, _ = setup
    theirs = checks["interfaces"]["nodes"]
    with _paths(base):
        for name in CHECKED:
            ours = interface(NODE_CLASS_MAPPINGS[name])
            for key in ("inputs", "order", "return_types", "function", "category"):
                assert ours[key] == theirs[name][key], f"{name}.{key}: ours {ours[key]} ComfyUI {theirs[name][key]}"


def test_clip_loader_clip_l_embeddings_equal_comfyuis(setup):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES

    base, _, _, theirs = setup
    with _paths(base):
        (clip,) = NODES["CLIPLoader"]().load_clip("clip_l.safetensors", "stable_diffusion")
        ((cond, extra),) = NODES["CLIPTextEncode"]().encode(clip, PROMPT)[0]
        skipped = NODES["CLIPTextEncode"]().encode(NODES["CLIPSetLastLayer"]().set_last_layer(clip, -2)[0], PROMPT)
    worst = {
        "cond": _rel(cond, theirs["clip_l.cond"]),
        "pooled": _rel(extra["pooled_output"], theirs["clip_l.pooled"]),
        "cond_skip2": _rel(skipped[0][0][0], theirs["clip_l.cond_skip2"]),
    }
    print("CLIPLoader clip_l, max relative difference to ComfyUI:", worst)
    assert all(value <= REL_TOLERANCE for value in worst.values()), worst


def test_refiner_denoised_equals_comfyuis(setup):
    from comfyui_core_nodes_models_checks import POSITIVE

    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
    from lcm_accel.hosts.standalone.denoiser import sigma_table
    from lcm_accel.hosts.standalone.refiner_conds import refiner_added_conds

    base, inputs, checks, theirs = setup
    assert checks["refiner"]["config"] == "SDXLRefiner", checks["refiner"]
    with _paths(base):
        model, _, _ = NODES["CheckpointLoaderSimple"]().load_checkpoint("refiner.safetensors")
    assert model.family == "sdxl_refiner"
    x, sigma = inputs["x"], inputs["sigma"]
    timestep = sigma_table(model).model_timestep(sigma)
    entries = {
        "positive": {"pooled_output": inputs["pooled"], **POSITIVE},
        "negative": {"pooled_output": inputs["pooled"]},
    }
    worst = {}
    for case, entry in entries.items():
        added = refiner_added_conds(entry, 1, x.shape[2] * 8, x.shape[3] * 8, "cpu", torch.float32, case)
        with torch.no_grad():
            eps = model.unet(
                x / (sigma**2 + 1) ** 0.5, timestep, encoder_hidden_states=inputs["cond"], added_cond_kwargs=added
            )
        worst[case] = _rel(x - eps.sample * sigma, theirs[f"refiner.{case}"])
    print("SDXL refiner denoised, max relative difference to ComfyUI:", worst)
    assert all(value <= REL_TOLERANCE for value in worst.values()), worst


def test_sdxl_base_refiner_handover_equals_comfyuis(setup):
    from comfyui_core_nodes_models_checks import HANDOVER, HANDOVER_PROMPTS, HANDOVER_STEP

    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES

    base, inputs, checks, theirs = setup
    if not checks["sdxl_handover"]["written"]:
        pytest.skip(f"sdxl not in LCM_ACCEL_COMFYUI_FAMILIES={','.join(FAMILIES)}")
    h = HANDOVER
    args = (h["steps"], h["cfg"], h["sampler"], h["scheduler"])
    sampler = NODES["KSamplerAdvanced"]()
    with _paths(base):
        loader = NODES["CheckpointLoaderSimple"]()
        model, clip, _ = loader.load_checkpoint("sdxl.safetensors")
        refiner, _, _ = loader.load_checkpoint("refiner.safetensors")
        conds = [
            NODES["CLIPTextEncodeSDXL"]().encode(clip, 4096, 4096, 0, 0, 4096, 4096, text, text)[0]
            for text in HANDOVER_PROMPTS
        ]
        refiner_conds = [
            [
                [
                    inputs["cond"],
                    {"pooled_output": inputs["pooled"], "aesthetic_score": score, "width": 1024, "height": 1024},
                ]
            ]
            for score in (6.0, 2.5)
        ]
        (latent,) = NODES["EmptyLatentImage"]().generate(64, 64, 1)
        (handed,) = sampler.sample(model, "enable", h["seed"], *args, *conds, latent, 0, HANDOVER_STEP, "enable")
        (refined,) = sampler.sample(
            refiner, "disable", 0, *args, *refiner_conds, handed, HANDOVER_STEP, 10000, "disable"
        )
    cond = conds[0][0][0]
    rms = float(cond.pow(2).mean().sqrt())
    worst = {
        "cond": _rel(cond, theirs["sdxl.cond"]),
        "handed_over": _rel(handed["samples"], theirs["sdxl.handed_over"]),
        "refined": _rel(refined["samples"], theirs["sdxl.refined"]),
    }
    print(f"SDXL base + refiner hand-over, conditioning rms {rms:.2f}, max relative difference to ComfyUI:", worst)
    assert rms <= MAX_CONDITIONING_RMS, f"the fixture's SDXL conditioning has rms {rms:.1f} (a trained CLIP's: ~1)"
    assert all(value <= REL_TOLERANCE for value in worst.values()), worst
