"""UI -> API conversion checked against the API format ComfyUI's frontend produces for the
same graph (hand-built twins in tests/data/harness), and the PNG / format-detection routes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lcm_accel.harness import NodeRegistry, ValidationError, WorkflowError, load_node_file, validate_prompt
from lcm_accel.harness.errors import WorkflowFormatError
from lcm_accel.harness.runner import api_prompt
from lcm_accel.harness.ui_to_api import convert_ui_to_api
from lcm_accel.harness.workflow_io import load_workflow
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

DATA = Path(__file__).parent / "data" / "harness"


def _json(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture
def registry(tmp_path):
    """ComfyUI core-node stand-ins, with a models folder holding the files the workflows name."""
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "loras").mkdir()
    (tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly.ckpt").write_bytes(b"")
    (tmp_path / "models" / "loras" / "lcm-lora-sdv1-5.safetensors").write_bytes(b"")
    reg = NodeRegistry()
    load_node_file(reg, DATA / "comfy_stub_nodes.py")
    with use_model_paths(ModelPaths(tmp_path / "models")):
        yield reg


@pytest.mark.parametrize("stem", ["default_txt2img", "txt2img_variants"])
def test_ui_converts_to_the_frontends_api_prompt(registry, stem):
    ui, expected = _json(f"{stem}.ui.json"), _json(f"{stem}.api.json")
    converted = convert_ui_to_api(ui, registry)
    assert converted == expected
    validate_prompt(converted, registry)  # and the result is runnable


def test_variants_each_feature_matters(registry):
    """Each special node changes the result the way ComfyUI does (guards against a twin that
    would also match a converter ignoring them)."""
    ui = _json("txt2img_variants.ui.json")
    api = convert_ui_to_api(ui, registry)
    assert api["3"]["inputs"]["seed"] == 42  # PrimitiveNode beats the stale widget value
    assert api["3"]["inputs"]["model"] == ["4", 0]  # reroute chain + bypassed LoRA
    assert {"10", "11", "12", "13", "14", "15", "17"}.isdisjoint(api)  # bypassed, virtual, muted
    unbypassed = copy.deepcopy(ui)
    next(n for n in unbypassed["nodes"] if n["id"] == 10)["mode"] = 0
    api2 = convert_ui_to_api(unbypassed, registry)
    assert api2["3"]["inputs"]["model"] == ["10", 0] and api2["6"]["inputs"]["clip"] == ["10", 1]
    assert api2["10"]["inputs"] == {
        "lora_name": "lcm-lora-sdv1-5.safetensors",
        "strength_model": 1,
        "strength_clip": 1,
        "model": ["4", 0],
        "clip": ["4", 1],
    }


def test_widgets_values_as_dict_and_boolean_control_value(registry):
    ui = _json("default_txt2img.ui.json")
    sampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    expected = convert_ui_to_api(ui, registry)
    sampler["widgets_values"] = {
        "seed": 156680208700286,
        "steps": 20,
        "cfg": 8,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1,
        "control_after_generate": "fixed",
    }
    assert convert_ui_to_api(ui, registry) == expected
    sampler["widgets_values"] = [156680208700286, "increment", 20, 8, "euler", "normal", 1]
    assert convert_ui_to_api(ui, registry) == expected


def test_missing_widget_values_take_the_frontend_defaults(registry):
    ui = _json("default_txt2img.ui.json")
    latent = next(n for n in ui["nodes"] if n["type"] == "EmptyLatentImage")
    latent["widgets_values"] = [640]
    assert convert_ui_to_api(ui, registry)["5"]["inputs"] == {"width": 640, "height": 512, "batch_size": 1}


def test_muted_upstream_node_fails_validation_downstream(registry):
    ui = _json("default_txt2img.ui.json")
    next(n for n in ui["nodes"] if n["id"] == 5)["mode"] = 2
    api = convert_ui_to_api(ui, registry)
    assert "5" not in api and "latent_image" not in api["3"]["inputs"]
    with pytest.raises(ValidationError) as caught:
        validate_prompt(api, registry)
    [problem] = caught.value.problems
    assert (problem.node_id, problem.class_type, problem.input_name) == ("3", "KSampler", "latent_image")


def test_bypassed_node_without_matching_input_drops_the_link(registry):
    ui = _json("default_txt2img.ui.json")
    next(n for n in ui["nodes"] if n["id"] == 8)["mode"] = 4  # VAEDecode: no IMAGE input to pass through
    api = convert_ui_to_api(ui, registry)
    assert "8" not in api and "images" not in api["9"]["inputs"]


def test_unknown_class_is_kept_for_validation_and_broken_links_are_reported(registry):
    ui = _json("default_txt2img.ui.json")
    next(n for n in ui["nodes"] if n["id"] == 8)["type"] = "FancyDecode"
    api = convert_ui_to_api(ui, registry)
    assert api["8"]["class_type"] == "FancyDecode" and api["8"]["inputs"]["samples"] == ["3", 0]
    ui["links"] = [link for link in ui["links"] if link[0] != 9]
    with pytest.raises(WorkflowError, match=r"node 9 \(SaveImage\), input 'images': link 9 is not in"):
        convert_ui_to_api(ui, registry)


def test_list_widget_values_are_boxed_like_the_frontend(registry):
    ui = _json("default_txt2img.ui.json")
    next(n for n in ui["nodes"] if n["id"] == 7)["widgets_values"] = [["a", "b"]]
    assert convert_ui_to_api(ui, registry)["7"]["inputs"]["text"] == {"__value__": ["a", "b"]}


def test_png_metadata_route_prefers_the_ui_workflow(registry, tmp_path):
    ui, api = _json("txt2img_variants.ui.json"), _json("txt2img_variants.api.json")
    info = PngInfo()
    info.add_text("prompt", json.dumps(api))
    info.add_text("workflow", json.dumps(ui))
    both = tmp_path / "both.png"
    Image.new("RGB", (4, 4)).save(both, pnginfo=info)
    loaded = load_workflow(both)
    assert loaded.kind == "ui" and loaded.data == ui
    prompt, extra = api_prompt(loaded, registry)
    assert prompt == api and extra == {"workflow": ui}

    only_prompt = PngInfo()
    only_prompt.add_text("prompt", json.dumps(api))
    Image.new("RGB", (4, 4)).save(tmp_path / "api.png", pnginfo=only_prompt)
    loaded = load_workflow(tmp_path / "api.png")
    assert loaded.kind == "api" and api_prompt(loaded, registry) == (api, None)

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(WorkflowFormatError, match="no ComfyUI 'workflow' or 'prompt' metadata"):
        load_workflow(tmp_path / "plain.png")


def test_format_detection(tmp_path):
    (tmp_path / "api.json").write_text(json.dumps({"prompt": _json("default_txt2img.api.json")}))
    assert load_workflow(tmp_path / "api.json").kind == "api"  # the /prompt request body
    (tmp_path / "bad.json").write_text('{"nodes": 3}')
    with pytest.raises(WorkflowFormatError, match="neither an API-format"):
        load_workflow(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        load_workflow(tmp_path / "broken.json")


def test_object_links_and_combo_control_widgets(registry):
    """Newer files store links as objects; a combo with control_after_generate carries a
    control value and a filter-list value, an `image_upload` combo its upload-button value."""
    ui = _json("default_txt2img.ui.json")
    expected = convert_ui_to_api(ui, registry)
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    ui["links"] = [dict(zip(keys, link)) for link in ui["links"]]
    assert convert_ui_to_api(ui, registry) == expected

    class Pick:
        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {
                    "choice": (["a", "b"], {"control_after_generate": True}),
                    "image": (["x.png"], {"image_upload": True}),
                    "count": ("INT", {}),
                }
            }

        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        def run(self, **kwargs):
            return {}

    registry.register("Pick", Pick)
    workflow = {
        "nodes": [{"id": 1, "type": "Pick", "mode": 0, "widgets_values": ["b", "increment", "", "x.png", "image", 5]}],
        "links": [],
    }
    assert convert_ui_to_api(workflow, registry)["1"]["inputs"] == {"choice": "b", "image": "x.png", "count": 5}
