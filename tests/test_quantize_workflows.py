"""Every example workflow runs headless on a quantized tiny model: each API graph gets an
LCMQuantizeUNet right after the checkpoint loader's MODEL output (keep_source on, so LoRA loaders
downstream are merged into the kept float weights and re-quantized), formats in rotation; and the
node's errors reach the user through the executor naming the node and input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import default_registry
from lcm_accel.runtime.model_paths import ModelPaths

ROOT = Path(__file__).resolve().parent.parent
API = sorted((ROOT / "example_workflows" / "api").glob("*.json"))
FORMATS = ("int8", "int4", "fp8_e4m3")
LOADERS = ("CheckpointLoaderSimple", "DiffusersLoader")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("quant_wf_models"))


def with_quantize_node(prompt: dict, fmt: str, keep: str = "default", keep_source: bool = True) -> dict:
    """The prompt with an LCMQuantizeUNet fed by each checkpoint loader's MODEL and feeding its users."""
    prompt = json.loads(json.dumps(prompt))
    if any(n["class_type"] == "LCMAccel_QuantizeUNet" for n in prompt.values()):
        return prompt  # already quantizes (after its LoRAs): a UNet is quantized once
    for loader in [i for i, n in prompt.items() if n["class_type"] in LOADERS]:
        new = str(max(int(i) for i in prompt) + 1)
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if value == [loader, 0]:
                    node["inputs"][name] = [new, 0]
        prompt[new] = {
            "class_type": "LCMAccel_QuantizeUNet",
            "inputs": {"model": [loader, 0], "format": fmt, "keep": keep, "group_size": 64, "keep_source": keep_source},
        }
    return prompt


def _small(prompt: dict) -> dict:
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"].update(steps=3)  # the 25-step baseline: the route matters here, not the steps
    return prompt


@pytest.mark.parametrize("path", API, ids=lambda p: p.stem)
def test_every_workflow_runs_on_a_quantized_model(path, demo_root, tmp_path):
    fmt = FORMATS[API.index(path) % len(FORMATS)]
    prompt = _small(with_quantize_node(json.loads(path.read_text()), fmt))
    assert any(n["class_type"] == "LCMAccel_QuantizeUNet" for n in prompt.values())
    paths = ModelPaths(demo_root / "models", input_dir=demo_root / "input", output_dir=tmp_path)
    Executor(default_registry(), paths).run(prompt)
    (png,) = tmp_path.glob("*.png")
    assert np.asarray(Image.open(png).convert("RGB")).std() > 0


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format": "int3"}, "format"),
        ({"keep": "default, no_such_layer"}, "keep pattern 'no_such_layer' matches no Linear/Conv2d layer"),
    ],
)
def test_bad_node_inputs_are_reported_naming_the_node(change, message, demo_root, tmp_path):
    prompt = _small(
        with_quantize_node(
            json.loads((ROOT / "example_workflows" / "api" / "lcm_lora_quantized.json").read_text()), "int8"
        )
    )
    node = max((i for i, n in prompt.items() if n["class_type"] == "LCMAccel_QuantizeUNet"), key=int)
    prompt[node]["inputs"].update(change)
    paths = ModelPaths(demo_root / "models", input_dir=demo_root / "input", output_dir=tmp_path)
    with pytest.raises(Exception, match=message) as error:
        Executor(default_registry(), paths).run(prompt)
    assert "LCMAccel_QuantizeUNet" in str(error.value)
