"""Image nodes (ComfyUI's SaveImage, PreviewImage, LoadImage).

PNG files carry ComfyUI's metadata: a `prompt` tEXt chunk with the API-format graph (hidden
input PROMPT) and one chunk per EXTRA_PNGINFO key (the UI-format `workflow`), as JSON, so the
files drag back into ComfyUI.
"""

from __future__ import annotations

import json
from pathlib import Path


def _model_paths():
    from ...runtime.model_paths import get_model_paths

    return get_model_paths()


def _png_info(prompt, extra_pnginfo):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def _to_pil(image):
    import numpy as np
    from PIL import Image

    array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


class SaveImage:
    """Write each image of the batch as `output/<prefix>_NNNNN_.png` with workflow metadata."""

    def __init__(self):
        self.type = "output"
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def _root(self) -> Path:
        return _model_paths().output_dir

    def _target(self, prefix: str) -> Path:
        return _model_paths().get_save_path(prefix)

    def save_images(self, images, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None):
        info = _png_info(prompt, extra_pnginfo)
        root = self._root()
        results = []
        for batch_number, image in enumerate(images):
            prefix = filename_prefix.replace("%batch_num%", str(batch_number))
            path = self._target(prefix)
            _to_pil(image).save(path, pnginfo=info, compress_level=self.compress_level)
            subfolder = path.parent.relative_to(root).as_posix()
            results.append(
                {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": self.type}
            )
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    """Like SaveImage, into the temporary folder beside `output/` (ComfyUI's `temp/`)."""

    def __init__(self):
        super().__init__()
        self.type = "temp"
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def _root(self) -> Path:
        return _model_paths().output_dir.parent / "temp"

    def _target(self, prefix: str) -> Path:
        from ...runtime.model_paths import ModelPaths

        paths = _model_paths()
        temp = ModelPaths(paths.models_dir, input_dir=paths.input_dir, output_dir=self._root())
        return temp.get_save_path(prefix)

    def save_images(self, images, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None):
        return super().save_images(images, "ComfyUI_temp", prompt, extra_pnginfo)


class LoadImage:
    """IMAGE and MASK from a file in the input folder (all frames of the same size)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_model_paths().list_input_files(), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image: str):
        from .image_io import load_image_and_mask

        return load_image_and_mask(_model_paths().get_input_path(image))
