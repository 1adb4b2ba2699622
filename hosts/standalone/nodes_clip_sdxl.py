"""SDXL's text nodes (ComfyUI's CLIPTextEncodeSDXL and CLIPTextEncodeSDXLRefiner).

CLIPTextEncodeSDXL gives each of SDXL's encoders its own prompt (text_l to CLIP-L, text_g to
OpenCLIP-G); when the two prompts need different numbers of 77-token chunks, the shorter side is
padded with chunks of the empty prompt, as ComfyUI does, so the two halves line up. Both nodes add
SDXL's size conditioning to the entry (`denoiser.sdxl_added_conds` reads it; the refiner's
aesthetic score is kept for a refiner UNet and ignored by a base one, as in ComfyUI).
"""

from __future__ import annotations

from .names import MAX_RESOLUTION


def _size(default: int) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": MAX_RESOLUTION})


def _text() -> tuple:
    return ("STRING", {"multiline": True, "dynamicPrompts": True})


def _pad_with_empty(z, empty, chunks: int):
    """`z` (1, 77 * n, dim) extended with copies of the empty prompt's chunk to `chunks` chunks."""
    import torch

    missing = chunks - z.shape[1] // empty.shape[1]
    return torch.cat([z] + [empty] * missing, dim=1) if missing > 0 else z


def encode_sdxl_pair(clip, text_g: str, text_l: str, node: str = "CLIPTextEncodeSDXL"):
    """(cond (1, 77 * chunks, 768 + 1280), pooled (1, 1280)) with text_l through CLIP-L and text_g
    through OpenCLIP-G."""
    import torch

    from ...runtime.fast_mode import settings_of
    from ...runtime.lora_state import activate_clip_patches
    from ...runtime.text_encoding import FAMILY_RULES, encode_weighted

    if clip is None:
        raise ValueError(f"{node}: clip input is invalid: None (the checkpoint has no text encoder)")
    if clip.family != "sdxl" or len(clip.text_encoders) != 2:
        raise ValueError(f"{node}: clip is a {clip.family} CLIP; this node needs SDXL's two text encoders")
    activate_clip_patches(clip)
    fast = settings_of(clip)
    halves = []
    for encoder, rule, text in zip(clip.text_encoders, FAMILY_RULES["sdxl"], (text_l, text_g)):
        z, pooled = encode_weighted(encoder, clip.tokenizer, text, rule, clip.layer_idx, fast)
        empty, _ = encode_weighted(encoder, clip.tokenizer, "", rule, clip.layer_idx, fast)
        halves.append((z, pooled, empty))
    chunks = max(z.shape[1] // empty.shape[1] for z, _, empty in halves)
    (z_l, _, empty_l), (z_g, pooled_g, empty_g) = halves
    cond = torch.cat([_pad_with_empty(z_l, empty_l, chunks), _pad_with_empty(z_g, empty_g, chunks)], dim=-1)
    return cond, pooled_g


class CLIPTextEncodeSDXL:
    """CONDITIONING from two prompts (OpenCLIP-G and CLIP-L) with SDXL's size and crop conditioning."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP",),
                "width": _size(1024),
                "height": _size(1024),
                "crop_w": _size(0),
                "crop_h": _size(0),
                "target_width": _size(1024),
                "target_height": _size(1024),
                "text_g": _text(),
                "text_l": _text(),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning"

    def encode(self, clip, width, height, crop_w, crop_h, target_width, target_height, text_g: str, text_l: str):
        cond, pooled = encode_sdxl_pair(clip, text_g, text_l)
        sizes = dict(width=width, height=height, crop_w=crop_w, crop_h=crop_h)
        sizes.update(target_width=target_width, target_height=target_height)
        return ([[cond, {"pooled_output": pooled, **sizes}]],)


class CLIPTextEncodeSDXLRefiner:
    """CONDITIONING from a prompt with the refiner's aesthetic score and image size."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ascore": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}),
                "width": _size(1024),
                "height": _size(1024),
                "text": _text(),
                "clip": ("CLIP",),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning"

    def encode(self, clip, ascore: float, width: int, height: int, text: str):
        from ...runtime.text_encoding import encode_prompt

        if clip is None:
            raise ValueError(
                "CLIPTextEncodeSDXLRefiner: clip input is invalid: None (the checkpoint has no text encoder)"
            )
        cond, pooled = encode_prompt(clip, text)
        return ([[cond, {"pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height}]],)
