"""The LoRA nodes' CLIP side, the mixer's LORA_STACK input and the fp8_e4m3fn name, on the standalone
host and the harness (ComfyUI itself: tests/test_comfyui_clip.py).

- LCMAdapterMixer / LCMLoraLoader with a CLIP: the text-encoder weights are W + sum_i w_i * (alpha/r) up @ down
  (kohya `lora_te_` and diffusers `text_encoder.` files), the conditioning equals chained core LoraLoaders;
  without a CLIP the CLIP output is None.
- LORA_STACK from an upstream node: validated as a link type, mixed into the same single patch as the slots.
- Workflows saved before these inputs existed (UI and API format) convert, validate and run unchanged.
- LCMQuantizeUNet shows fp8_e4m3fn and still accepts the fp8_e4m3 of saved workflows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lora_stack_node import TestLoraStack
from safetensors.torch import save_file

from lcm_accel.fixtures import shared_models_root, tiny_model
from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors
from lcm_accel.harness.errors import ValidationError
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import default_registry
from lcm_accel.harness.runner import api_prompt
from lcm_accel.harness.validation import validate_prompt
from lcm_accel.harness.workflow_io import load_workflow
from lcm_accel.lora_merge import LoraPatchError
from lcm_accel.lora_merge.writer import kohya_state_dict
from lcm_accel.nodes import PACK_NODES as PACK
from lcm_accel.runtime.lora_state import activate_clip_patches
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy_workflows"
CLIP_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
STYLE, PEFT_TE, XL_TE, LCM = "style_te.safetensors", "te_peft.safetensors", "xl_te.safetensors", "lcm.safetensors"
TE_RANK, TE_ALPHA = 4, 2.0


def _te_factors(encoder, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path (with the `text_model.` level) -> (down, up) for every attention / MLP linear."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in encoder.named_modules():
        if name.endswith(CLIP_MODULES):
            path = name if name.startswith("text_model.") else "text_model." + name
            factors[path] = (
                torch.randn(rank, module.in_features, generator=g) * 0.3,
                torch.randn(module.out_features, rank, generator=g) * 0.3,
            )
    return factors


def _kohya_te(factors: dict, prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    tensors = {}
    for path, (down, up) in factors.items():
        key = prefix + path.replace(".", "_")
        tensors.update(
            {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
        )
    return tensors


@pytest.fixture(scope="module")
def te_factors() -> dict[str, dict]:
    encoder = tiny_model("sd15").text_encoders[0]
    return {STYLE: _te_factors(encoder, TE_RANK, 1), PEFT_TE: _te_factors(encoder, 2, 2)}


@pytest.fixture(scope="module")
def paths(tmp_path_factory, te_factors) -> ModelPaths:
    """tiny SD1.5 checkpoint + tokenizer; LoRAs: UNet-only, UNet + kohya TE, diffusers TE-only, SDXL te2."""
    root = tmp_path_factory.mktemp("lora_clip")
    shared = shared_models_root() / "models"
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(shared / "checkpoints" / "tiny_sd15.safetensors", root / "models" / "checkpoints")
    shutil.copytree(shared / "tokenizers", root / "models" / "tokenizers")
    loras = root / "models" / "loras"
    loras.mkdir()
    unet_part = kohya_state_dict(random_factors(lora_targets(tiny_model("sd15").unet), 4, 11, scale=0.2), alpha=4.0)
    save_file(unet_part, str(loras / LCM))
    save_file({**unet_part, **_kohya_te(te_factors[STYLE], "lora_te_", TE_ALPHA)}, str(loras / STYLE))
    peft = {}
    for path, (down, up) in te_factors[PEFT_TE].items():
        peft.update({f"text_encoder.{path}.lora_A.weight": down, f"text_encoder.{path}.lora_B.weight": up})
    save_file(peft, str(loras / PEFT_TE))
    save_file(_kohya_te(te_factors[PEFT_TE], "lora_te2_", 2.0), str(loras / XL_TE))
    return ModelPaths(root / "models", output_dir=root / "output")


class Keep:
    """A test output node keeping any of the values it is given (so the executor runs their producers)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"model": ("MODEL",), "clip": ("CLIP",), "conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"

    def keep(self, **values):
        return {}


def _registry():
    registry = default_registry()
    registry.register("TestLoraStack", TestLoraStack, source="test")
    registry.register("Keep", Keep, source="test")
    return registry


def _mixer(**inputs) -> dict:
    base = {
        "model": ["ckpt", 0],
        "lora_1": "None",
        "weight_1": 1.0,
        "lora_2": "None",
        "weight_2": 0.8,
        "lora_3": "None",
        "weight_3": 1.0,
        "lora_4": "None",
        "weight_4": 1.0,
        "rank": 0,
    }
    return {"class_type": "LCMAccel_AdapterMixer4", "inputs": {**base, **inputs}}


def _run(paths: ModelPaths, nodes: dict, keep: dict) -> object:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        **nodes,
        "keep": {"class_type": "Keep", "inputs": keep},
    }
    return Executor(_registry(), paths).run(prompt)


def _encode(clip_link: list) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": clip_link}}


def _weights(encoder) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in encoder.named_parameters()}


def test_mixer_clip_output_is_the_text_encoder_formula_and_equals_core_loaders(paths, te_factors):
    nodes = {
        "mix": _mixer(
            lora_1=STYLE,
            weight_1=0.8,
            lora_2=PEFT_TE,
            weight_2=0.0,
            clip=["ckpt", 1],
            clip_weight_1=0.6,
            clip_weight_2=-0.4,
        ),
        "core1": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "lora_name": STYLE,
                "strength_model": 0.8,
                "strength_clip": 0.6,
            },
        },
        "core2": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["core1", 0],
                "clip": ["core1", 1],
                "lora_name": PEFT_TE,
                "strength_model": 0.0,
                "strength_clip": -0.4,
            },
        },
        "enc_mix": _encode(["mix", 1]),
        "enc_core": _encode(["core2", 1]),
        "enc_base": _encode(["ckpt", 1]),
    }
    result = _run(paths, nodes, {"model": ["mix", 0], "clip": ["mix", 1], "conditioning": ["enc_mix", 0]})
    result_core = _run(paths, nodes, {"conditioning": ["enc_core", 0]})
    result_base = _run(paths, nodes, {"conditioning": ["enc_base", 0]})
    ours, core, plain = (
        r.output(i)[0][0][0] for r, i in ((result, "enc_mix"), (result_core, "enc_core"), (result_base, "enc_base"))
    )
    torch.testing.assert_close(ours, core, rtol=0, atol=1e-6)
    assert (ours - plain).abs().max() > 1e-3  # the text-encoder part reached the conditioning

    base_clip, mixed_clip = result.output("ckpt", 1)[0], result.output("mix", 1)[0]
    assert len(mixed_clip.patches) == 2 and not base_clip.patches
    encoder = base_clip.text_encoders[0]
    activate_clip_patches(base_clip)
    base = _weights(encoder)
    activate_clip_patches(mixed_clip)
    patched = _weights(encoder)
    checked = 0
    for name, weight in base.items():
        path = name[: -len(".weight")]
        path = path if path.startswith("text_model.") else "text_model." + path
        expected = weight.clone()
        for file, strength, scale in ((STYLE, 0.6, TE_ALPHA / TE_RANK), (PEFT_TE, -0.4, 1.0)):
            if name.endswith(".weight") and path in te_factors[file]:
                down, up = te_factors[file][path]
                expected += strength * scale * (up @ down)
                checked += 1
        torch.testing.assert_close(patched[name], expected, rtol=1e-5, atol=1e-5)
    assert checked == 2 * len(te_factors[STYLE])
    activate_clip_patches(base_clip)
    assert all(torch.equal(p, base[n]) for n, p in encoder.named_parameters())  # bit-exact restore


def test_loader_clip_output_and_unconnected_clip(paths):
    nodes = {
        "lcm": {
            "class_type": "LCMAccel_LoraLoader",
            "inputs": {
                "model": ["ckpt", 0],
                "lora_name": STYLE,
                "strength": 1.0,
                "clip": ["ckpt", 1],
                "strength_clip": 0.5,
            },
        },
        "bare": {
            "class_type": "LCMAccel_LoraLoader",
            "inputs": {"model": ["ckpt", 0], "lora_name": LCM, "strength": 1.0},
        },
        "mix": _mixer(lora_1=LCM),
    }
    result = _run(paths, nodes, {"model": ["bare", 0], "clip": ["lcm", 1]})
    model, clip = result.output("lcm")[0], result.output("lcm", 1)[0]
    assert model.sampling_type == "lcm" and [(e.lora.name, e.weight) for e in clip.patches] == [(STYLE, 0.5)]
    assert result.output("bare", 1)[0] is None
    # direct calls: no CLIP -> None; a UNet-only LoRA with a CLIP returns that CLIP
    base_model, base_clip = result.output("ckpt")[0], result.output("ckpt", 1)[0]
    with use_model_paths(paths):
        assert PACK["LCMAccel_AdapterMixer4"]().mix(base_model, LCM, 1.0)[1] is None
        assert PACK["LCMAccel_AdapterMixer4"]().mix(base_model, LCM, 1.0, clip=base_clip)[1] is base_clip
        assert (
            PACK["LCMAccel_LoraLoader"]().load_lora(base_model, STYLE, 1.0, clip=base_clip, strength_clip=0.0)[1]
            is base_clip
        )


def test_lora_stack_from_an_upstream_node_joins_the_single_patch(paths):
    stack = {"class_type": "TestLoraStack", "inputs": {"lora_name": STYLE, "model_strength": 0.8, "clip_strength": 0.6}}
    nodes = {
        "stack": stack,
        "stacked": _mixer(lora_1=LCM, weight_1=1.0, clip=["ckpt", 1], lora_stack=["stack", 0]),
        "slots": _mixer(lora_1=LCM, weight_1=1.0, lora_2=STYLE, weight_2=0.8, clip=["ckpt", 1], clip_weight_2=0.6),
    }
    result = _run(paths, nodes, {"model": ["stacked", 0], "clip": ["slots", 1]})
    result_slots = _run(paths, nodes, {"model": ["slots", 0], "clip": ["stacked", 1]})
    stacked_model, stacked_clip = result.output("stacked")[0], result_slots.output("stacked", 1)[0]
    slot_model, slot_clip = result_slots.output("slots")[0], result.output("slots", 1)[0]

    def entries(host_value):
        return [(e.lora.name, e.weight) for e in host_value.patches]

    assert entries(stacked_model) == entries(slot_model) == [(LCM, 1.0), (STYLE, 0.8)]
    assert {e.rank for e in stacked_model.patches} == {None}
    # one add_loras call: both files land in ONE combined patch per weight (as the slots do)
    assert entries(stacked_clip) == entries(slot_clip) == [(STYLE, 0.6)]


def test_lora_stack_link_types_are_checked(paths):
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "mix": _mixer(lora_1=LCM, lora_stack=["ckpt", 0]),
        "keep": {"class_type": "Keep", "inputs": {"model": ["mix", 0]}},
    }
    with use_model_paths(paths), pytest.raises(ValidationError, match="lora_stack"):
        validate_prompt(prompt, _registry())
    prompt["mix"]["inputs"]["lora_stack"] = ["stack", 0]
    prompt["stack"] = {
        "class_type": "TestLoraStack",
        "inputs": {"lora_name": LCM, "model_strength": 1.0, "clip_strength": 1.0},
    }
    with use_model_paths(paths):
        validate_prompt(prompt, _registry())


def test_bad_lora_stack_and_text_encoder_parts_name_the_input(paths):
    model = object()  # never reached: every check runs before the host is called
    mixer = PACK["LCMAccel_AdapterMixer4"]()
    with use_model_paths(paths):
        for stack, message in (
            (STYLE, "LCMAccel_AdapterMixer4: lora_stack must be a LORA_STACK"),
            (
                [(STYLE, 1.0)],
                r"LCMAccel_AdapterMixer4: lora_stack\[0\] must be \(lora_name, model_strength, clip_strength\)",
            ),
            ([("missing.safetensors", 1.0, 1.0)], r"lora_stack\[0\] 'missing.safetensors' is not in the loras folder"),
            ([(STYLE, 1.0, float("inf"))], r"lora_stack\[0\] clip_strength must be a finite number"),
        ):
            with pytest.raises(ValueError, match=message):
                mixer.mix(model, "None", 1.0, lora_stack=stack)
        with pytest.raises(ValueError, match="every lora_1..lora_4 is None and lora_stack is empty"):
            mixer.mix(model, "None", 1.0, lora_stack=[("None", 1.0, 1.0)])
        with pytest.raises(ValueError, match="LCMAccel_AdapterMixer4: clip_weight_3"):
            mixer.mix(model, LCM, 1.0, clip_weight_3=11.0)
        with pytest.raises(ValueError, match="LCMAccel_LoraLoader: strength_clip"):
            PACK["LCMAccel_LoraLoader"]().load_lora(model, LCM, 1.0, strength_clip=float("nan"))
    result = _run(paths, {}, {"clip": ["ckpt", 1]})
    base_model, base_clip = result.output("ckpt")[0], result.output("ckpt", 1)[0]
    with use_model_paths(paths), pytest.raises(LoraPatchError, match=r"xl_te.safetensors.*'te2'"):
        mixer.mix(base_model, XL_TE, 0.0, clip=base_clip)
    assert not base_clip.patches


# --------------------------------------------------------------------------- saved workflows
@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("legacy_demo"))


def _demo_paths(root: Path, out: Path) -> ModelPaths:
    return ModelPaths(root / "models", input_dir=root / "input", output_dir=out)


@pytest.mark.parametrize(
    "name",
    ["lcm_lora_style_mixer.json", "lcm_lora_style_mixer_api.json", "lcm_lora_txt2img.json", "lcm_lora_quantized.json"],
)
def test_workflows_saved_before_the_clip_inputs_still_convert_and_validate(name, demo_root):
    registry = default_registry()
    with use_model_paths(_demo_paths(demo_root, demo_root / "output")):
        prompt, _ = api_prompt(load_workflow(LEGACY / name), registry)
        validate_prompt(json.loads(json.dumps(prompt)), registry)
    for node in prompt.values():
        if node["class_type"] == "LCMAccel_AdapterMixer4":
            inputs = node["inputs"]
            assert (inputs["lora_2"], inputs["weight_2"], inputs["rank"]) == ("style-lora-sd15.safetensors", 0.8, 0)
            assert "clip" not in inputs and "lora_stack" not in inputs
        if node["class_type"] in ("LCMAccel_AdapterMixer4", "LCMAccel_LoraLoader"):
            assert node["inputs"]["model"][1] == 0 and "clip" not in node["inputs"]


def test_saved_style_mixer_runs_headless(demo_root, tmp_path):
    registry = default_registry()
    paths = _demo_paths(demo_root, tmp_path)
    with use_model_paths(paths):
        prompt, extra = api_prompt(load_workflow(LEGACY / "lcm_lora_style_mixer.json"), registry)
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
    Executor(registry, paths).run(prompt, extra_pnginfo=extra)
    assert len(list(tmp_path.glob("*.png"))) == 1


# --------------------------------------------------------------------------- fp8 name
def test_quantize_format_is_named_as_comfyui_names_it(demo_root, tmp_path):
    spec = PACK["LCMAccel_QuantizeUNet"].INPUT_TYPES()["required"]["format"]
    assert spec[0] == ["int8", "fp8_e4m3fn", "int4"]
    assert PACK["LCMAccel_QuantizeUNet"].VALIDATE_INPUTS(format="fp8_e4m3") is True
    assert "fp8_e4m3fn" in PACK["LCMAccel_QuantizeUNet"].VALIDATE_INPUTS(format="fp8")
    registry = default_registry()
    paths = _demo_paths(demo_root, tmp_path)
    with use_model_paths(paths):
        prompt, _ = api_prompt(load_workflow(LEGACY / "lcm_lora_quantized.json"), registry)
    # the saved file names the node by its old id, which the harness resolves to LCMAccel_QuantizeUNet
    (node_id,) = [i for i, n in prompt.items() if n["class_type"] == "LCMQuantizeUNet"]
    for saved in ("fp8_e4m3", "fp8_e4m3fn"):
        prompt[node_id]["inputs"]["format"] = saved
        with use_model_paths(paths):
            validate_prompt(json.loads(json.dumps(prompt)), registry)
    prompt[node_id]["inputs"]["format"] = "fp8_e5m2"
    with use_model_paths(paths), pytest.raises(ValidationError, match="format must be one of int8, fp8_e4m3fn, int4"):
        validate_prompt(prompt, registry)


def test_cli_format_choices_show_fp8_e4m3fn():
    import argparse

    from lcm_accel.runtime.quantize_command import add_quantize_command

    parser = argparse.ArgumentParser()
    add_quantize_command(parser.add_subparsers())
    for name in ("fp8_e4m3fn", "fp8_e4m3", "fp8"):
        assert parser.parse_args(["quantize", "--base", "b", "--format", name, "--out", "o"]).format == name
    assert "{int8,fp8_e4m3fn,int4}" in parser.format_help() or "fp8_e4m3fn" in _subcommand_help(parser)


def _subcommand_help(parser) -> str:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices["quantize"].format_help()
