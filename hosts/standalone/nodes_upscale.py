"""Resizing nodes (ComfyUI's LatentUpscale, LatentUpscaleBy, ImageScale, ImageScaleBy,
ImageScaleToTotalPixels): ComfyUI's sizes and rounding, resampled by `resample.common_upscale`."""

from __future__ import annotations

import math

from .names import CROP_METHODS, IMAGE_UPSCALE_METHODS, LATENT_UPSCALE_METHODS, MAX_RESOLUTION


def _check_choice(node: str, name: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ValueError(f"{node}: {name} {value!r} is not one of {', '.join(choices)}")


def _resize_image(node: str, image, method: str, width: int, height: int, crop: str = "disabled"):
    """IMAGE (B, H, W, C) resized through the channels-first resampler."""
    from .resample import common_upscale

    _check_choice(node, "upscale_method", method, IMAGE_UPSCALE_METHODS)
    _check_choice(node, "crop", crop, CROP_METHODS)
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def _resize_latent(node: str, samples: dict, method: str, width: int, height: int, crop: str = "disabled") -> dict:
    """LATENT with its samples resized to (height, width) latent pixels; other keys kept."""
    from .resample import common_upscale

    _check_choice(node, "upscale_method", method, LATENT_UPSCALE_METHODS)
    _check_choice(node, "crop", crop, CROP_METHODS)
    return {**samples, "samples": common_upscale(samples["samples"], width, height, method, crop)}


class LatentUpscale:
    """Resize a latent to a pixel size (multiples of 8; at least 64; a 0 side keeps the aspect)."""

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (LATENT_UPSCALE_METHODS,),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "crop": (CROP_METHODS,),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples: dict, upscale_method: str, width: int, height: int, crop: str):
        if width == 0 and height == 0:
            return (samples,)
        latent_h, latent_w = samples["samples"].shape[-2:]
        if width == 0:
            height = max(64, height)
            width = max(64, round(latent_w * height / latent_h))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(latent_h * width / latent_w))
        else:
            width, height = max(64, width), max(64, height)
        return (_resize_latent("LatentUpscale", samples, upscale_method, width // 8, height // 8, crop),)


class LatentUpscaleBy:
    """Resize a latent by a factor (each side rounded)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (LATENT_UPSCALE_METHODS,),
                "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples: dict, upscale_method: str, scale_by: float):
        latent_h, latent_w = samples["samples"].shape[-2:]
        width, height = round(latent_w * scale_by), round(latent_h * scale_by)
        return (_resize_latent("LatentUpscaleBy", samples, upscale_method, width, height),)


class ImageScale:
    """Resize images to a size (a 0 side keeps the aspect; both 0: unchanged)."""

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (IMAGE_UPSCALE_METHODS,),
                "width": ("INT", dict(size)),
                "height": ("INT", dict(size)),
                "crop": (CROP_METHODS,),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method: str, width: int, height: int, crop: str):
        if width == 0 and height == 0:
            return (image,)
        image_h, image_w = image.shape[1:3]
        if width == 0:
            width = max(1, round(image_w * height / image_h))
        elif height == 0:
            height = max(1, round(image_h * width / image_w))
        return (_resize_image("ImageScale", image, upscale_method, width, height, crop),)


class ImageScaleBy:
    """Resize images by a factor (each side rounded)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (IMAGE_UPSCALE_METHODS,),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method: str, scale_by: float):
        image_h, image_w = image.shape[1:3]
        width, height = round(image_w * scale_by), round(image_h * scale_by)
        return (_resize_image("ImageScaleBy", image, upscale_method, width, height),)


class ImageScaleToTotalPixels:
    """Resize images to about `megapixels` million pixels (1 megapixel = 1024 * 1024), aspect kept."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (IMAGE_UPSCALE_METHODS,),
                "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method: str, megapixels: float):
        image_h, image_w = image.shape[1:3]
        scale_by = math.sqrt(int(megapixels * 1024 * 1024) / (image_w * image_h))
        width, height = round(image_w * scale_by), round(image_h * scale_by)
        return (_resize_image("ImageScaleToTotalPixels", image, upscale_method, width, height),)
