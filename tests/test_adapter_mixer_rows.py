"""The LCM Adapter Mixer with growing rows (V3 Autogrow), headless, and the node declarations.

- six LoRA Rows into the mixer give the UNet and text-encoder weights of six chained core LoraLoaders
  (fp32 rounding), the same as the 4-slot legacy mixer for the LoRAs it can hold, and the rows are
  read in socket order from the flat names (headless) and from Autogrow's nested dict (ComfyUI);
- a workflow saved with the old ids and the 4-slot mixer gives the same image as the example
  workflow with rows; `migrate` rewrites the old ids; every node declares what the V3 schema needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lcm_accel.fixtures import shared_models_root, tiny_model
from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.fixtures.tiny_loras import kohya_te_factors, lora_targets, random_factors
from lcm_accel.harness.cli_commands import migrate_workflow
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import default_registry
from lcm_accel.hosts.node_declaration import PREFIX, autogrow_values
from lcm_accel.lora_merge.writer import kohya_state_dict
from lcm_accel.nodes import DISPLAY_NAMES, NODE_CLASSES, OLD_NODE_IDS, PACK_NODES
from lcm_accel.runtime.lora_state import activate_clip_patches, activate_patches
from lcm_accel.runtime.model_paths import ModelPaths

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy_workflows"
ROWS = [(f"mix_{i}.safetensors", 1.0 - 0.3 * i, 0.5 - 0.2 * i) for i in range(6)]  # (file, model, clip)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> ModelPaths:
    """tiny SD1.5 checkpoint + tokenizer, and six LoRAs with UNet and text-encoder parts."""
    root = tmp_path_factory.mktemp("mixer_rows")
    shared = shared_models_root() / "models"
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(shared / "checkpoints" / "tiny_sd15.safetensors", root / "models" / "checkpoints")
    shutil.copytree(shared / "tokenizers", root / "models" / "tokenizers")
    (root / "models" / "loras").mkdir()
    model = tiny_model("sd15")
    targets = lora_targets(model.unet)
    for index, (name, _, _) in enumerate(ROWS):
        unet = kohya_state_dict(random_factors(targets, 2 + index, 30 + index, scale=0.1), alpha=2.0)
        save_file(
            {**unet, **kohya_te_factors(model.text_encoders[0], 2, 60 + index)}, str(root / "models" / "loras" / name)
        )
    return ModelPaths(root / "models", output_dir=root / "output")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("demo_models"))


class Keep:
    """A test output node keeping the values it is given (so the executor runs their producers)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"model": ("MODEL",), "clip": ("CLIP",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"

    def keep(self, **values):
        return {}


def _run(paths: ModelPaths, nodes: dict, keep: dict):
    registry = default_registry()
    registry.register("Keep", Keep, source="test")
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        **nodes,
        "keep": {"class_type": "Keep", "inputs": keep},
    }
    return Executor(registry, paths).run(prompt)


def _weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _patched(model, clip) -> tuple[dict, dict]:
    """The UNet's and the text encoder's weights with the MODEL's and the CLIP's patches active."""
    activate_patches(model)
    activate_clip_patches(clip)
    return _weights(model.unet), _weights(clip.text_encoders[0])


def test_six_rows_equal_six_chained_core_loaders(paths):
    rows = {
        f"row{i}": {
            "class_type": "LCMAccel_LoraRow",
            "inputs": {"lora_name": name, "model_strength": model, "clip_strength": clip},
        }
        for i, (name, model, clip) in enumerate(ROWS)
    }
    mixer = {
        "class_type": "LCMAccel_AdapterMixer",
        "inputs": {
            "model": ["ckpt", 0],
            "clip": ["ckpt", 1],
            "rank": 0,
            **{f"loras.lora{i}": [f"row{i}", 0] for i in range(len(ROWS))},
        },
    }
    chained, source = {}, "ckpt"
    for i, (name, model, clip) in enumerate(ROWS):
        chained[f"core{i}"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": [source, 0],
                "clip": [source, 1],
                "lora_name": name,
                "strength_model": model,
                "strength_clip": clip,
            },
        }
        source = f"core{i}"
    mixed = _run(paths, {**rows, "mix": mixer}, {"model": ["mix", 0], "clip": ["mix", 1]})
    core = _run(paths, chained, {"model": [source, 0], "clip": [source, 1]})
    base_model, base_clip = mixed.output("ckpt", 0)[0], mixed.output("ckpt", 1)[0]
    base_unet, base_te = _patched(base_model, base_clip)
    mix_unet, mix_te = _patched(mixed.output("mix", 0)[0], mixed.output("mix", 1)[0])
    core_unet, core_te = _patched(core.output(source, 0)[0], core.output(source, 1)[0])
    changed = [n for n in base_unet if not torch.equal(base_unet[n], mix_unet[n])]
    assert len(changed) == len(lora_targets(base_model.unet))
    assert any(not torch.equal(base_te[n], mix_te[n]) for n in base_te)
    for name in base_unet:
        torch.testing.assert_close(mix_unet[name], core_unet[name], rtol=1e-5, atol=1e-6)
    for name in base_te:
        torch.testing.assert_close(mix_te[name], core_te[name], rtol=1e-5, atol=1e-6)


def test_rows_equal_the_four_slot_mixer(paths):
    (a, wa, ca), (b, wb, cb) = ROWS[0], ROWS[3]
    rows = {
        "ra": {"class_type": "LCMAccel_LoraRow", "inputs": {"lora_name": a, "model_strength": wa, "clip_strength": ca}},
        "rb": {"class_type": "LCMAccel_LoraRow", "inputs": {"lora_name": b, "model_strength": wb, "clip_strength": cb}},
        "mix": {
            "class_type": "LCMAccel_AdapterMixer",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "rank": 0,
                "loras.lora0": ["ra", 0],
                "loras.lora1": ["rb", 0],
            },
        },
    }
    slots = {
        "mix": {
            "class_type": "LCMAdapterMixer",  # the old id, as saved workflows hold it
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "lora_1": a,
                "weight_1": wa,
                "clip_weight_1": ca,
                "lora_2": b,
                "weight_2": wb,
                "clip_weight_2": cb,
                "lora_3": "None",
                "weight_3": 1.0,
                "lora_4": "None",
                "weight_4": 1.0,
                "rank": 0,
            },
        }
    }
    grown = _run(paths, rows, {"model": ["mix", 0], "clip": ["mix", 1]})
    legacy = _run(paths, slots, {"model": ["mix", 0], "clip": ["mix", 1]})
    ours = _patched(grown.output("mix", 0)[0], grown.output("mix", 1)[0])
    theirs = _patched(legacy.output("mix", 0)[0], legacy.output("mix", 1)[0])
    for mine, other in zip(ours, theirs):
        assert all(torch.equal(mine[n], other[n]) for n in mine)


def test_mixer_without_rows_and_bad_rows_name_the_input(paths):
    node = PACK_NODES["LCMAccel_AdapterMixer"]()
    from lcm_accel.runtime.model_paths import use_model_paths

    with use_model_paths(paths):
        with pytest.raises(ValueError, match="LCMAccel_AdapterMixer: no LoRA connected"):
            node.mix(None, 0)
        with pytest.raises(ValueError, match=r"LCMAccel_AdapterMixer: loras.lora1\[0\] 'gone.safetensors' is not"):
            node.mix(
                None, 0, **{"loras.lora0": [(ROWS[0][0], 1.0, 1.0)], "loras.lora1": [("gone.safetensors", 1.0, 1.0)]}
            )
        with pytest.raises(ValueError, match="LCMAccel_LoraRow: model_strength must be a number"):
            PACK_NODES["LCMAccel_LoraRow"]().row(ROWS[0][0], float("nan"), 1.0)


def test_autogrow_values_come_in_socket_order_from_both_shapes():
    flat = {"model": 1, "loras.lora10": "k", "loras.lora2": "c", "loras.lora0": "a", "loras.lora1": None}
    nested = {"model": 1, "loras": {"lora10": "k", "lora2": "c", "lora0": "a", "lora1": None}}
    assert autogrow_values("loras", flat) == autogrow_values("loras", nested) == ["a", "c", "k"]
    assert autogrow_values("loras", {"model": 1}) == []


def test_every_node_declares_what_the_v3_schema_needs(paths):
    from lcm_accel.runtime.model_paths import use_model_paths

    for cls in NODE_CLASSES:
        node = cls.NODE_ID
        assert node.startswith(PREFIX) and node == PACK_NODES[node].NODE_ID
        assert cls.DISPLAY_NAME == DISPLAY_NAMES[node] and 0 < len(cls.DISPLAY_NAME) <= 40, node
        assert cls.DESCRIPTION and cls.CATEGORY == "LCM Accel", node
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) and all(cls.OUTPUT_TOOLTIPS), node
        assert isinstance(cls.SEARCH_ALIASES, tuple) and (cls.SEARCH_ALIASES or getattr(cls, "DEPRECATED", False))
        with use_model_paths(paths):
            input_types = cls.INPUT_TYPES()
        for inputs in input_types.values():
            for name, raw in inputs.items():
                assert raw[1].get("tooltip"), f"{node}.{name} has no tooltip"
    assert len(PACK_NODES) == len(NODE_CLASSES)
    # an old id never shadows a new one, and each maps to a node of the same inputs
    assert not set(OLD_NODE_IDS) & set(PACK_NODES)


def _image(paths_root: Path) -> np.ndarray:
    (png,) = sorted(paths_root.glob("*.png"))
    return np.asarray(Image.open(png).convert("RGB"))


def test_saved_workflow_with_old_ids_gives_the_example_workflows_image(demo_root, tmp_path):
    """tests/data/legacy_workflows/lcm_lora_style_mixer_api.json (old ids, 4-slot mixer) and
    example_workflows/api/lcm_lora_style_mixer.json (LCMAccel_ ids, LoRA Rows) draw the same image."""
    registry = default_registry()
    images = []
    for index, path in enumerate(
        (LEGACY / "lcm_lora_style_mixer_api.json", ROOT / "example_workflows" / "api" / "lcm_lora_style_mixer.json")
    ):
        prompt = json.loads(path.read_text())
        for node in prompt.values():
            if node["class_type"] == "EmptyLatentImage":
                node["inputs"].update(width=64, height=64)
        out = tmp_path / f"out{index}"
        Executor(registry, ModelPaths(demo_root / "models", output_dir=out)).run(prompt)
        images.append(_image(out))
    assert images[0].std() > 0 and np.array_equal(images[0], images[1])


def test_migrate_rewrites_old_ids_in_both_formats(tmp_path):
    ui = json.loads((LEGACY / "lcm_lora_style_mixer.json").read_text())
    api = json.loads((LEGACY / "lcm_lora_style_mixer_api.json").read_text())
    new_ui, changed_ui = migrate_workflow(ui, OLD_NODE_IDS)
    new_api, changed_api = migrate_workflow(api, OLD_NODE_IDS)
    assert {n["type"] for n in new_ui["nodes"]} & set(OLD_NODE_IDS) == set()
    assert {n["class_type"] for n in new_api.values()} & set(OLD_NODE_IDS) == set()
    assert "LCMAccel_AdapterMixer4" in {n["class_type"] for n in new_api.values()}
    assert len(changed_ui) == len(changed_api) == 3  # mixer, scheduler, sampler
