"""The standalone host's node table: ComfyUI's node interface on every class, cheap import."""

from __future__ import annotations

import inspect
import subprocess
import sys

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

COMFYUI_CORE = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "DiffusersLoader": ("MODEL", "CLIP", "VAE"),
    "CLIPTextEncode": ("CONDITIONING",),
    "CLIPSetLastLayer": ("CLIP",),
    "EmptyLatentImage": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "VAEEncode": ("LATENT",),
    "KSampler": ("LATENT",),
    "KSamplerAdvanced": ("LATENT",),
    "ModelSamplingDiscrete": ("MODEL",),
    "LoraLoader": ("MODEL", "CLIP"),
    "LoraLoaderModelOnly": ("MODEL",),
    "SamplerCustom": ("LATENT", "LATENT"),
    "KSamplerSelect": ("SAMPLER",),
    "BasicScheduler": ("SIGMAS",),
    "SaveImage": (),
    "PreviewImage": (),
    "LoadImage": ("IMAGE", "MASK"),
    "LatentUpscale": ("LATENT",),
    "LatentUpscaleBy": ("LATENT",),
    "ImageScale": ("IMAGE",),
    "ImageScaleBy": ("IMAGE",),
    "ImageScaleToTotalPixels": ("IMAGE",),
    "RepeatLatentBatch": ("LATENT",),
    "LatentFromBatch": ("LATENT",),
    "SetLatentNoiseMask": ("LATENT",),
    "VAEEncodeForInpaint": ("LATENT",),
    "LoadImageMask": ("MASK",),
    "ConditioningCombine": ("CONDITIONING",),
    "ConditioningZeroOut": ("CONDITIONING",),
    "ConditioningSetTimestepRange": ("CONDITIONING",),
    "SDTurboScheduler": ("SIGMAS",),
    "SamplerCustomAdvanced": ("LATENT", "LATENT"),
    "RandomNoise": ("NOISE",),
    "DisableNoise": ("NOISE",),
    "CFGGuider": ("GUIDER",),
    "BasicGuider": ("GUIDER",),
    "CLIPTextEncodeSDXL": ("CONDITIONING",),
    "CLIPTextEncodeSDXLRefiner": ("CONDITIONING",),
    "VAELoader": ("VAE",),
    "UNETLoader": ("MODEL",),
    "CLIPLoader": ("CLIP",),
    "DualCLIPLoader": ("CLIP",),
    "ControlNetLoader": ("CONTROL_NET",),
    "ControlNetApplyAdvanced": ("CONDITIONING", "CONDITIONING"),
    "ControlNetApply": ("CONDITIONING",),
}


def test_every_node_has_comfyui_interface():
    assert set(NODE_CLASS_MAPPINGS) == set(COMFYUI_CORE)
    with use_model_paths(ModelPaths(shared_models_root() / "models")):
        for name, cls in NODE_CLASS_MAPPINGS.items():
            assert cls.__name__ == name and cls.RETURN_TYPES == COMFYUI_CORE[name]
            inputs = cls.INPUT_TYPES()
            function = getattr(cls(), cls.FUNCTION)
            parameters = inspect.signature(function).parameters
            for section in ("required", "optional", "hidden"):
                for input_name in inputs.get(section, {}):
                    assert input_name in parameters, f"{name}.{cls.FUNCTION} lacks input {input_name}"
            assert isinstance(cls.CATEGORY, str)
    assert NODE_CLASS_MAPPINGS["SaveImage"].OUTPUT_NODE and NODE_CLASS_MAPPINGS["PreviewImage"].OUTPUT_NODE
    assert list(NODE_CLASS_MAPPINGS["KSampler"].INPUT_TYPES()["required"]) == [
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ]


def test_importing_the_host_loads_no_heavy_library():
    code = (
        "import sys, lcm_accel.hosts.standalone as h; assert h.NODE_CLASS_MAPPINGS; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_lists_every_core_node_the_headless_host_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    coverage = readme[readme.index("ComfyUI core nodes the headless host runs") :]
    assert sorted(name for name in NODE_CLASS_MAPPINGS if f"`{name}`" not in coverage) == []
