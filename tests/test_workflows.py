"""End to end: every example workflow runs headless on the tiny stand-in models, its UI file
converts to its API twin, the LCM route equals diffusers' pipeline, saved PNGs round-trip,
and the README's demo command works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcm_accel.fixtures import tiny_model
from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import default_registry
from lcm_accel.harness.runner import api_prompt, apply_overrides
from lcm_accel.harness.ui_to_api import convert_ui_to_api
from lcm_accel.harness.workflow_io import load_workflow
from lcm_accel.runtime.model_paths import ModelPaths

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
SMALL = {"EmptyLatentImage": {"width": 128, "height": 128}}  # keeps the tiny runs fast


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("demo_models"))


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def _paths(root: Path, out: Path) -> ModelPaths:
    return ModelPaths(root / "models", input_dir=root / "input", output_dir=out)


def _run(path: Path, root: Path, out: Path, registry, sets: list[str] = (), shrink: bool = True):
    paths = _paths(root, out)
    executor = Executor(registry, paths)
    from lcm_accel.runtime.model_paths import use_model_paths

    with use_model_paths(paths):
        prompt, extra = api_prompt(load_workflow(path), registry)
    if shrink:
        sets = [f"{i}.{k}={v}" for i, n in prompt.items() for k, v in SMALL.get(n["class_type"], {}).items()] + list(
            sets
        )
    apply_overrides(prompt, list(sets), registry, extra)
    return executor.run(prompt, extra_pnginfo=extra), prompt


def _node_id(prompt: dict, class_type: str) -> str:
    (found,) = [i for i, n in prompt.items() if n["class_type"] == class_type]
    return found


def test_there_are_the_seven_example_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {
        "lcm_lora_txt2img",
        "lcm_lora_style_mixer",
        "lcm_lora_sdxl",
        "lcm_lora_img2img",
        "tcd_txt2img",
        "baseline_25step_cfg7",
        "lcm_lora_deepcache",
        "lcm_lora_quantized",
    } <= names
    assert {p.stem for p in (ROOT / "example_workflows" / "api").glob("*.json")} == names


def test_workflow_files_match_the_nodes(demo_root):
    """The files are what tools/build_workflows.py writes from the nodes' current definitions."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_workflows.py"), "--check", "--models", str(demo_root)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_ui_file_converts_to_its_api_twin(path, registry, demo_root):
    from lcm_accel.runtime.model_paths import use_model_paths

    with use_model_paths(_paths(demo_root, demo_root / "output")):
        converted = convert_ui_to_api(json.loads(path.read_text()), registry)
    assert converted == json.loads((path.parent / "api" / path.name).read_text())


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_runs_headless(path, registry, demo_root, tmp_path):
    result, prompt = _run(path, demo_root, tmp_path, registry)
    saved = sorted(tmp_path.glob("*.png"))
    assert len(saved) == 1
    image = Image.open(saved[0])
    assert json.loads(image.text["prompt"]) == prompt
    expected = json.loads(path.read_text())  # the file, with the size overrides written in
    for node in expected["nodes"]:
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [SMALL["EmptyLatentImage"]["width"], SMALL["EmptyLatentImage"]["height"]]
    assert json.loads(image.text["workflow"]) == expected
    pixels = np.asarray(image.convert("RGB"))
    decoded = result.output(_node_id(prompt, "VAEDecode"))[0]
    assert pixels.shape == tuple(decoded.shape[1:]) and pixels.std() > 0


def _diffusers_lcm_latents(demo_root: Path, prompt: str, negative: str, cfg: float, steps: int, seed: int, size: int):
    """diffusers' StableDiffusionPipeline + LCMScheduler + the same LoRA file, same weights/seed."""
    import copy

    from diffusers import LCMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tiny = tiny_model("sd15")
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(tiny.vae),
        text_encoder=copy.deepcopy(tiny.text_encoders[0]),
        tokenizer=CLIPTokenizer.from_pretrained(demo_root / "models" / "tokenizers" / "clip"),
        unet=copy.deepcopy(tiny.unet),
        scheduler=LCMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(demo_root / "models" / "loras" / "lcm-lora-sdv1-5.safetensors"), adapter_name="lcm")
    return pipe(
        prompt,
        negative_prompt=negative if cfg > 1 else None,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=torch.Generator().manual_seed(seed),
        height=size,
        width=size,
        output_type="latent",
    ).images


@pytest.mark.parametrize("cfg", [1.0, 1.5])
def test_lcm_lora_workflow_equals_diffusers_pipeline(cfg, registry, demo_root, tmp_path):
    path = ROOT / "example_workflows" / "lcm_lora_txt2img.json"
    result, prompt = _run(
        path,
        demo_root,
        tmp_path,
        registry,
        shrink=True,
        sets=[f"{_node_id(json.loads((path.parent / 'api' / path.name).read_text()), 'LCMAccel_KSampler')}.cfg={cfg}"],
    )
    sampler = prompt[_node_id(prompt, "LCMAccel_KSampler")]["inputs"]
    texts = {i: n["inputs"]["text"] for i, n in prompt.items() if n["class_type"] == "CLIPTextEncode"}
    ours = (
        result.output(_node_id(prompt, "LCMAccel_KSampler"))[0]["samples"]
        * tiny_model("sd15").vae.config.scaling_factor
    )
    reference = _diffusers_lcm_latents(
        demo_root,
        texts[sampler["positive"][0]],
        texts[sampler["negative"][0]],
        cfg,
        sampler["steps"],
        sampler["seed"],
        SMALL["EmptyLatentImage"]["width"],
    )
    scale = reference.abs().max()
    assert (ours - reference).abs().max() <= 1e-5 * scale, float((ours - reference).abs().max() / scale)


def test_saved_png_runs_again_to_the_same_image(registry, demo_root, tmp_path):
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    _run(ROOT / "example_workflows" / "lcm_lora_style_mixer.json", demo_root, first_out, registry)
    (png,) = first_out.glob("*.png")
    _run(png, demo_root, second_out, default_registry(), shrink=False)  # a fresh registry and executor
    (again,) = second_out.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))


def test_readme_demo_command_writes_a_png(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, "-m", "lcm_accel", "demo", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # no --models: the embedded model; the LCM-LoRA picture and the contact sheet beside it
    png, sheet = sorted((tmp_path / "out").glob("*.png"), key=lambda p: p.name == "embedded_contact_sheet.png")
    assert f"saved {png}" in out.stdout and f"contact sheet: {sheet}" in out.stdout
    assert Image.open(png).size == (64, 64)
    assert Image.open(sheet).size[0] == 4 * 256
