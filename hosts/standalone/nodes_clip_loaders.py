"""ComfyUI's CLIPLoader and DualCLIPLoader: CLIP from split text-encoder files in
models/text_encoders (or the legacy models/clip).

Same inputs and combo values as ComfyUI 0.3.64's nodes, so shared workflows validate unchanged; the
types the standalone host runs are the SD ones (`part_files.CLIP_TYPES`): CLIPLoader's
"stable_diffusion" (CLIP-L, or OpenCLIP-G for the SDXL refiner) and DualCLIPLoader's "sdxl"
(CLIP-L + OpenCLIP-G). Any other type is refused naming the node and the input.
"""

from __future__ import annotations

CLIP_LOADER_TYPES = [
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
]
DUAL_CLIP_LOADER_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
DEVICES = ["default", "cpu"]


def _text_encoder_names() -> list[str]:
    from ...runtime.model_paths import get_model_paths

    return get_model_paths().get_filename_list("text_encoders")


def _load(node: str, inputs: dict[str, str], clip_type: str, device: str):
    """The CLIP of the named files; errors name the node and the input."""
    from ...runtime.checkpoint_config import CheckpointFormatError
    from ...runtime.devices import current_placement
    from ...runtime.model_paths import get_model_paths
    from ...runtime.part_files import CLIP_TYPES, load_text_encoder_files

    offered = CLIP_LOADER_TYPES if node == "CLIPLoader" else DUAL_CLIP_LOADER_TYPES
    if clip_type not in offered:
        raise ValueError(f"{node}: type {clip_type!r} is not one of {', '.join(offered)}")
    if clip_type not in CLIP_TYPES:
        headless = ", ".join(repr(t) for t in offered if t in CLIP_TYPES)
        raise ValueError(
            f"{node}: type {clip_type!r} is not supported by the standalone host; it runs type {headless} "
            "(the SD1.5 / SDXL text encoders)"
        )
    if device not in DEVICES:
        raise ValueError(f"{node}: device {device!r} is not one of {', '.join(DEVICES)}")
    placement = current_placement()
    if device == "cpu" and placement.device.type != "cpu":  # ComfyUI's "cpu": load and run them on the CPU
        from dataclasses import replace

        import torch

        placement = replace(placement, device=torch.device("cpu"), text_encoder_dtype=torch.float32)
    paths = [get_model_paths().get_full_path("text_encoders", name) for name in inputs.values()]
    try:
        return (load_text_encoder_files(paths, clip_type, placement),)
    except CheckpointFormatError as error:
        names = ", ".join(f"{key} {name!r}" for key, name in inputs.items())
        raise CheckpointFormatError(f"{node}: {names}: {error}") from error


class CLIPLoader:
    """CLIP from one text-encoder file: CLIP-L (SD1.5) or OpenCLIP-G (SDXL refiner)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"clip_name": (_text_encoder_names(),), "type": (CLIP_LOADER_TYPES,)},
            "optional": {"device": (DEVICES, {"advanced": True})},
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    DESCRIPTION = "[Recipes]\n\nstable_diffusion: clip-l (SD1.5), or clip-g (SDXL refiner)"

    def load_clip(self, clip_name: str, type: str = "stable_diffusion", device: str = "default"):
        return _load("CLIPLoader", {"clip_name": clip_name}, type, device)


class DualCLIPLoader:
    """CLIP from two text-encoder files: CLIP-L + OpenCLIP-G for SDXL, in either order."""

    @classmethod
    def INPUT_TYPES(cls):
        names = _text_encoder_names()
        return {
            "required": {"clip_name1": (names,), "clip_name2": (names,), "type": (DUAL_CLIP_LOADER_TYPES,)},
            "optional": {"device": (DEVICES, {"advanced": True})},
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    DESCRIPTION = "[Recipes]\n\nsdxl: clip-l, clip-g"

    def load_clip(self, clip_name1: str, clip_name2: str, type: str, device: str = "default"):
        return _load("DualCLIPLoader", {"clip_name1": clip_name1, "clip_name2": clip_name2}, type, device)
