"""Stand-ins for ComfyUI's core nodes, for harness tests: the same names, INPUT_TYPES,
RETURN_TYPES, display names and hidden inputs as ComfyUI's nodes (as its documentation and
saved workflows show them), with trivial pure-Python bodies that record their calls.
Loadable with `python -m lcm_accel run --nodes tests/data/harness/comfy_stub_nodes.py`."""

from __future__ import annotations

import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lcm_accel.runtime.model_paths import get_model_paths
from lcm_accel.runtime.progress import ProgressBar

MAX_RESOLUTION = 16384
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "lcm", "ddim"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]
CALLS: list[tuple[str, dict]] = []  # (class name, kwargs) of every call, for tests


def _record(name: str, **kwargs) -> None:
    CALLS.append((name, kwargs))


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (get_model_paths().get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name):
        path = get_model_paths().get_full_path("checkpoints", ckpt_name)
        _record("CheckpointLoaderSimple", ckpt_name=ckpt_name)
        return ({"model": path.name, "loras": []}, {"clip": path.name}, {"vae": path.name})


class LoraLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "lora_name": (get_model_paths().get_filename_list("loras"),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        _record("LoraLoader", lora_name=lora_name)
        return ({**model, "loras": model["loras"] + [(lora_name, strength_model)]}, clip)


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip, text):
        _record("CLIPTextEncode", text=text)
        return ([[text, {}]],)


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent"

    def generate(self, width, height, batch_size=1):
        _record("EmptyLatentImage", width=width, height=height)
        return ({"width": width, "height": height, "batch_size": batch_size},)


class KSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (SAMPLERS,),
                "scheduler": (SCHEDULERS,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        _record("KSampler", seed=seed, steps=steps)
        bar = ProgressBar(steps)
        for _ in range(steps):
            bar.update(1)
        return ({**latent_image, "seed": seed, "model": model, "positive": positive[0][0]},)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "latent"

    def decode(self, vae, samples):
        _record("VAEDecode")
        return ({"latent": samples},)


class SaveImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        _record("SaveImage", filename_prefix=filename_prefix, prompt=prompt, extra_pnginfo=extra_pnginfo)
        paths = get_model_paths()
        path = paths.get_save_path(filename_prefix)
        metadata = PngInfo()
        if prompt is not None:
            metadata.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items():
            metadata.add_text(key, json.dumps(value))
        Image.new("RGB", (8, 8), (images["latent"]["seed"] % 256, 0, 0)).save(path, pnginfo=metadata)
        subfolder = path.parent.relative_to(paths.output_dir).as_posix()
        return {
            "ui": {
                "images": [
                    {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
                ]
            }
        }


class PreviewImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "preview"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def preview(self, images, prompt=None, extra_pnginfo=None):
        _record("PreviewImage")
        return {"ui": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]}}


class LoadImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (get_model_paths().list_input_files(), {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    def load_image(self, image):
        path = get_model_paths().get_input_path(image)
        _record("LoadImage", image=image)
        return ({"file": path.name}, None)


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "LoraLoader": LoraLoader,
    "CLIPTextEncode": CLIPTextEncode,
    "EmptyLatentImage": EmptyLatentImage,
    "KSampler": KSampler,
    "VAEDecode": VAEDecode,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "LoadImage": LoadImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "LoraLoader": "Load LoRA",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "EmptyLatentImage": "Empty Latent Image",
    "KSampler": "KSampler",
    "VAEDecode": "VAE Decode",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "LoadImage": "Load Image",
}


class PrimitiveInt:
    """ComfyUI's "Int" node (comfy_extras): a constant INT output."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"min": -(2**63), "max": 2**63 - 1, "control_after_generate": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "execute"
    CATEGORY = "utils/primitive"

    def execute(self, value):
        _record("PrimitiveInt", value=value)
        return (value,)


NODE_CLASS_MAPPINGS["PrimitiveInt"] = PrimitiveInt
NODE_DISPLAY_NAME_MAPPINGS["PrimitiveInt"] = "Int"
