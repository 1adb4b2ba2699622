"""Inpainting nodes (ComfyUI's SetLatentNoiseMask, VAEEncodeForInpaint, LoadImageMask).

MASK is (B, H, W) in 0..1 with 1 = repaint. A LATENT's `noise_mask` makes the sampler keep the
unmasked region on the (noised) input latent at every step (`denoiser.InpaintDenoiser`).
"""

from __future__ import annotations

import math

MASK_CHANNELS = ["alpha", "red", "green", "blue"]


def _model_paths():
    from ...runtime.model_paths import get_model_paths

    return get_model_paths()


class SetLatentNoiseMask:
    """Attach a mask to a latent: only the masked region is denoised."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"
    CATEGORY = "latent/inpaint"

    def set_mask(self, samples: dict, mask):
        return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)


def inpaint_pixels_and_mask(pixels, mask, grow_mask_by: int, multiple: int = 8):
    """(pixels with the masked region set to grey, noise mask at pixel size) as VAEEncodeForInpaint
    prepares them: the mask resized (bilinear) to the image, both centre-cropped to multiples of
    `multiple`, the rounded mask dilated by a `grow_mask_by` square so the seam is repainted too."""
    import torch.nn.functional as F

    height, width = pixels.shape[1] // multiple * multiple, pixels.shape[2] // multiple * multiple
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    mask = F.interpolate(mask, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
    top, left = (pixels.shape[1] % multiple) // 2, (pixels.shape[2] % multiple) // 2
    pixels = pixels[:, top : top + height, left : left + width, :].clone()
    mask = mask[:, :, top : top + height, left : left + width]
    binary = mask.round()
    if grow_mask_by == 0:
        grown = mask
    else:  # a dilation: every pixel within the square around a masked pixel becomes masked
        padding = math.ceil((grow_mask_by - 1) / 2)
        grown = F.max_pool2d(binary, grow_mask_by, stride=1, padding=padding).clamp(0, 1)
    keep = (1.0 - binary).squeeze(1)
    pixels[..., :3] = (pixels[..., :3] - 0.5) * keep[..., None] + 0.5
    return pixels, grown[:, :, :height, :width].round()


class VAEEncodeForInpaint:
    """Encode an image with its masked region greyed out; the latent carries the grown mask."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pixels": ("IMAGE",),
                "vae": ("VAE",),
                "mask": ("MASK",),
                "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent/inpaint"

    def encode(self, vae, pixels, mask, grow_mask_by: int = 6):
        from ...runtime.vae_codec import DOWNSCALE, encode

        if not 0 <= int(grow_mask_by) <= 64:
            raise ValueError(f"VAEEncodeForInpaint: grow_mask_by {grow_mask_by} is outside 0..64")
        masked, noise_mask = inpaint_pixels_and_mask(pixels, mask, int(grow_mask_by), DOWNSCALE)
        return ({"samples": encode(vae, masked), "noise_mask": noise_mask},)


def load_mask(path, channel: str):
    """MASK (1, H, W) from one channel of an image file (alpha inverted: transparent = 1)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = ImageOps.exif_transpose(Image.open(path))
    except UnidentifiedImageError as error:
        raise ValueError(f"LoadImageMask: {path.name} is not an image Pillow can read") from error
    if image.getbands() != ("R", "G", "B", "A"):
        if image.mode == "I":
            image = image.point(lambda value: value * (1 / 255))
        image = image.convert("RGBA")
    values = torch.from_numpy(np.array(image.getchannel(channel[0].upper())).astype(np.float32) / 255.0)
    return (1.0 - values if channel == "alpha" else values)[None]


class LoadImageMask:
    """MASK from a channel (alpha, red, green or blue) of an image in the input folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": (_model_paths().list_input_files(), {"image_upload": True}),
                "channel": (MASK_CHANNELS,),
            }
        }

    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"
    CATEGORY = "mask"

    def load_image(self, image: str, channel: str):
        if channel not in MASK_CHANNELS:
            raise ValueError(f"LoadImageMask: channel {channel!r} is not one of {', '.join(MASK_CHANNELS)}")
        return (load_mask(_model_paths().get_input_path(image), channel),)
