"""The pack's LCM nodes: exact inputs (names, order, defaults, tooltips), the cheap / ComfyUI-aware
entry point, real runs through the harness executor (LoRA loader and mixer included), and errors
that name the offending input."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lcm_accel.fixtures import shared_models_root, tiny_model
from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya, write_peft
from lcm_accel.harness.errors import HarnessError
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import NodeRegistry, default_registry
from lcm_accel.hosts.standalone import nodes_custom_sampling
from lcm_accel.nodes import PACK_NODES as PACK
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

ROOT = Path(__file__).resolve().parent.parent
SEED = 77

EXPECTED_INPUTS = {
    "LCMAccel_LoraLoader": ["model", "lora_name", "strength"],
    "LCMAccel_AdapterMixer4": [
        "model",
        "lora_1",
        "weight_1",
        "lora_2",
        "weight_2",
        "lora_3",
        "weight_3",
        "lora_4",
        "weight_4",
        "rank",
    ],
    "LCMAccel_Scheduler": ["model", "steps", "original_inference_steps", "strength"],
    "LCMAccel_Sampler": ["gamma"],
    "LCMAccel_KSampler": [
        "model",
        "seed",
        "steps",
        "cfg",
        "positive",
        "negative",
        "latent_image",
        "original_inference_steps",
        "gamma",
        "denoise",
    ],
}
EXPECTED_OUTPUTS = {
    "LCMAccel_LoraLoader": ("MODEL", "CLIP"),
    "LCMAccel_AdapterMixer4": ("MODEL", "CLIP"),
    "LCMAccel_Scheduler": ("SIGMAS",),
    "LCMAccel_Sampler": ("SAMPLER",),
    "LCMAccel_KSampler": ("LATENT",),
}
EXPECTED_OPTIONS = {
    ("LCMAccel_LoraLoader", "strength"): dict(default=1.0, min=-10.0, max=10.0, step=0.01),
    ("LCMAccel_AdapterMixer4", "weight_2"): dict(default=0.8, min=-10.0, max=10.0, step=0.01),
    ("LCMAccel_AdapterMixer4", "lora_2"): dict(default="None"),
    ("LCMAccel_AdapterMixer4", "rank"): dict(default=0, min=0, max=1024),
    ("LCMAccel_Scheduler", "steps"): dict(default=4, min=1, max=50),
    ("LCMAccel_Scheduler", "original_inference_steps"): dict(default=50, min=1, max=1000),
    ("LCMAccel_Scheduler", "strength"): dict(default=1.0, min=0.01, max=1.0, step=0.01),
    ("LCMAccel_Sampler", "gamma"): dict(default=0.0, min=0.0, max=1.0, step=0.01),
    ("LCMAccel_KSampler", "seed"): dict(default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
    ("LCMAccel_KSampler", "cfg"): dict(default=1.0, min=0.0, max=30.0, step=0.1),
    ("LCMAccel_KSampler", "denoise"): dict(default=1.0, min=0.01, max=1.0, step=0.01),
}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    """A models folder with the tiny SD1.5 checkpoint, its tokenizer and two LoRA files."""
    root = tmp_path_factory.mktemp("lcm_nodes")
    shared = shared_models_root() / "models"
    shutil.copy(shared / "checkpoints" / "tiny_sd15.safetensors", root / "tiny_sd15.safetensors")
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.move(root / "tiny_sd15.safetensors", root / "models" / "checkpoints" / "tiny_sd15.safetensors")
    shutil.copytree(shared / "tokenizers", root / "models" / "tokenizers")
    targets = lora_targets(tiny_model("sd15").unet)
    write_kohya(
        root / "models" / "loras" / "lcm_lora.safetensors", random_factors(targets, 4, 11, scale=0.2), alpha=4.0
    )
    write_peft(root / "models" / "loras" / "style" / "style.safetensors", random_factors(targets, 2, 12, scale=0.2))
    return root


@pytest.fixture(scope="module")
def paths(models_root) -> ModelPaths:
    return ModelPaths(models_root / "models", output_dir=models_root / "output")


def test_inputs_outputs_and_tooltips_are_the_published_ones(paths):
    with use_model_paths(paths):
        for name, expected in EXPECTED_INPUTS.items():
            cls = PACK[name]
            required = cls.INPUT_TYPES()["required"]
            assert list(required) == expected, name
            assert cls.RETURN_TYPES == EXPECTED_OUTPUTS[name] and cls.CATEGORY == "LCM Accel"
            for input_name, spec in required.items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        for (name, input_name), options in EXPECTED_OPTIONS.items():
            spec = PACK[name].INPUT_TYPES()["required"][input_name][1]
            assert {k: spec.get(k) for k in options} == options, (name, input_name)
        mixer = PACK["LCMAccel_AdapterMixer4"].INPUT_TYPES()["required"]
        assert mixer["lora_1"][0] == ["None", "lcm_lora.safetensors", "style/style.safetensors"]
        assert PACK["LCMAccel_LoraLoader"].INPUT_TYPES()["required"]["lora_name"][0] == mixer["lora_1"][0][1:]


def _import_pack_as_custom_node(with_comfyui: bool) -> str:
    """Import the repo root as ComfyUI does (module named after its path, dots replaced), in a fresh interpreter."""
    fake = (
        "import types; sys.modules['comfy'] = types.ModuleType('comfy'); "
        "sys.modules['folder_paths'] = types.ModuleType('folder_paths')"
        if with_comfyui
        else "pass"
    )
    code = textwrap.dedent(f"""
        import importlib.util, logging, sys
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
        {fake}
        module_path = {str(ROOT)!r}
        sys_module_name = module_path.replace(".", "_x_")  # ComfyUI's nodes.load_custom_node for a folder
        spec = importlib.util.spec_from_file_location(sys_module_name, module_path + "/__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        nodes = importlib.import_module(sys_module_name + ".nodes")
        print("ENTRY", callable(module.comfy_entrypoint), "NODES", sorted(nodes.PACK_NODES), "TORCH", "torch" in sys.modules)
        try:
            print("HOST", importlib.import_module(sys_module_name + ".hosts").get_host().name)
        except Exception as error:
            print("HOST", type(error).__name__, error)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_entry_point_is_cheap_and_picks_the_host_by_process():
    headless = _import_pack_as_custom_node(with_comfyui=False)
    assert f"ENTRY True NODES {sorted(PACK)} TORCH False" in headless and "HOST standalone" in headless
    inside = _import_pack_as_custom_node(with_comfyui=True)
    assert f"ENTRY True NODES {sorted(PACK)} TORCH False" in inside
    # The stand-in `comfy` has none of ComfyUI's modules: the ComfyUI host is chosen and fails to import.
    assert "HOST ModuleNotFoundError No module named 'comfy." in inside


class KeepLatent:
    """A test output node, so the executor runs the sampler feeding it (results stay inspectable)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"

    def keep(self, samples):
        return {}


def _registry() -> NodeRegistry:
    registry = default_registry()
    registry.register("KeepLatent", KeepLatent, source="test")
    for name in ("SamplerCustom", "KSamplerSelect", "BasicScheduler"):
        if name not in registry:  # until the lead registers them in hosts/standalone/__init__.py
            registry.register(name, getattr(nodes_custom_sampling, name), source="test")
    return registry


def _prompt(lora: dict | None, steps: int = 4, denoise: float = 1.0) -> dict:
    """Checkpoint -> [LoRA node] -> LCMKSampler, and the same through SamplerCustom."""
    model = ["lora", 0] if lora else ["ckpt", 0]
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "lcm": {
            "class_type": "LCMAccel_KSampler",
            "inputs": {
                "model": model,
                "seed": SEED,
                "steps": steps,
                "cfg": 1.5,
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["empty", 0],
                "original_inference_steps": 50,
                "gamma": 0.0,
                "denoise": denoise,
            },
        },
        "sigmas": {
            "class_type": "LCMAccel_Scheduler",
            "inputs": {"model": model, "steps": steps, "original_inference_steps": 50, "strength": denoise},
        },
        "sampler": {"class_type": "LCMAccel_Sampler", "inputs": {"gamma": 0.0}},
        "custom": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": model,
                "add_noise": True,
                "noise_seed": SEED,
                "cfg": 1.5,
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "sampler": ["sampler", 0],
                "sigmas": ["sigmas", 0],
                "latent_image": ["empty", 0],
            },
        },
    }
    if lora:
        prompt["lora"] = lora
    return _keep(prompt, "lcm", "custom")


def _keep(prompt: dict, *node_ids: str) -> dict:
    """Add an output node after each of `node_ids`."""
    for node_id in node_ids:
        prompt[f"keep_{node_id}"] = {"class_type": "KeepLatent", "inputs": {"samples": [node_id, 0]}}
    return prompt


def _run(paths, prompt):
    return Executor(_registry(), paths).run(prompt)


def test_executor_runs_both_lcm_routes_with_the_lora_loader(paths):
    loader = {
        "class_type": "LCMAccel_LoraLoader",
        "inputs": {"model": ["ckpt", 0], "lora_name": "lcm_lora.safetensors", "strength": 1.0},
    }
    prompt = _prompt(loader)
    prompt["core"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["lora", 0],
            "seed": SEED,
            "steps": 4,
            "cfg": 1.0,
            "sampler_name": "lcm",
            "scheduler": "normal",
            "positive": ["pos", 0],
            "negative": ["neg", 0],
            "latent_image": ["empty", 0],
            "denoise": 1.0,
        },
    }
    result = _run(paths, _keep(prompt, "core"))
    with_lora = result.output("lcm")[0]["samples"]
    torch.testing.assert_close(result.output("custom")[0]["samples"], with_lora, rtol=0, atol=0)
    assert result.output("lora")[0].sampling_type == "lcm" and result.output("ckpt")[0].sampling_type == "eps"
    assert torch.isfinite(result.output("core")[0]["samples"]).all()  # core KSampler "lcm" on the loader's MODEL

    base = _run(paths, _prompt(None)).output("lcm")[0]["samples"]
    assert (with_lora - base).abs().max() > 1e-3 * base.abs().max()  # the LoRA reached the UNet
    again = _run(paths, _prompt(loader)).output("lcm")[0]["samples"]  # after the base run restored the weights
    torch.testing.assert_close(again, with_lora, rtol=0, atol=0)


def test_mixer_is_one_weighted_patch_without_switching_sampling(paths):
    def mixed(**slots):
        inputs = {
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
            **slots,
        }
        result = _run(paths, _prompt({"class_type": "LCMAccel_AdapterMixer4", "inputs": inputs}, steps=2))
        return result.output("lora")[0], result.output("lcm")[0]["samples"]

    loader = {
        "class_type": "LCMAccel_LoraLoader",
        "inputs": {"model": ["ckpt", 0], "lora_name": "lcm_lora.safetensors", "strength": 0.7},
    }
    reference = _run(paths, _prompt(loader, steps=2)).output("lcm")[0]["samples"]
    model, split = mixed(lora_1="lcm_lora.safetensors", weight_1=0.3, lora_3="lcm_lora.safetensors", weight_3=0.4)
    assert model.sampling_type == "eps"  # the mixer leaves the sampling mode alone
    torch.testing.assert_close(split, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    _, two = mixed(lora_1="lcm_lora.safetensors", lora_2="style/style.safetensors")
    assert (two - reference).abs().max() > 1e-3 * reference.abs().max()


@pytest.mark.parametrize(
    "node, inputs, words",
    [
        ("LCMAccel_KSampler", {"steps": 0}, "steps"),
        ("LCMAccel_Sampler", {"gamma": 1.5}, "gamma"),
        ("LCMAccel_Scheduler", {"strength": 0.0}, "strength"),
    ],
)
def test_out_of_range_widgets_are_refused_by_the_executor(paths, node, inputs, words):
    prompt = _prompt(None)
    target = {"LCMAccel_KSampler": "lcm", "LCMAccel_Sampler": "sampler", "LCMAccel_Scheduler": "sigmas"}[node]
    prompt[target]["inputs"].update(inputs)
    with pytest.raises(HarnessError, match=words):
        _run(paths, prompt)


def test_direct_calls_name_the_bad_input(paths):
    model = object()  # never reached: every check runs before the host is called
    with use_model_paths(paths):
        with pytest.raises(ValueError, match=r"LCMAccel_Scheduler: steps=10 .* original_inference_steps=8"):
            PACK["LCMAccel_Scheduler"]().get_sigmas(model, 10, 8, 1.0)
        with pytest.raises(ValueError, match=r"LCMAccel_KSampler: steps=4 .* denoise=0.05"):
            PACK["LCMAccel_KSampler"]().sample(model, 0, 4, 1.0, [], [], {}, 50, 0.0, 0.05)
        with pytest.raises(ValueError, match="LCMAccel_KSampler: cfg"):
            PACK["LCMAccel_KSampler"]().sample(model, 0, 4, 31.0, [], [], {}, 50, 0.0, 1.0)
        with pytest.raises(ValueError, match="LCMAccel_AdapterMixer4: every lora_1..lora_4 is None"):
            PACK["LCMAccel_AdapterMixer4"]().mix(model, "None", 1.0)
        with pytest.raises(
            ValueError, match="LCMAccel_AdapterMixer4: lora_2 'missing.safetensors' is not in the loras"
        ):
            PACK["LCMAccel_AdapterMixer4"]().mix(model, "lcm_lora.safetensors", 1.0, "missing.safetensors", 1.0)
        with pytest.raises(ValueError, match="LCMAccel_AdapterMixer4: rank"):
            PACK["LCMAccel_AdapterMixer4"]().mix(model, "lcm_lora.safetensors", 1.0, rank=2000)
        with pytest.raises(ValueError, match="LCMAccel_LoraLoader: lora_name 'None'"):
            PACK["LCMAccel_LoraLoader"]().load_lora(model, "None", 1.0)
