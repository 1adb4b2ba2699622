"""The SDXL refiner's added conditioning (ComfyUI's `SDXLRefiner.encode_adm`).

The refiner's UNet takes pooled OpenCLIP-G text plus five 256-wide sinusoidal embeddings: height,
width, crop_h, crop_w and the aesthetic score (SDXL's base takes target sizes in place of the
score). diffusers' `text_time` add-embedding computes exactly this from `time_ids` in that order
(its own refiner pipeline passes them so), so a refiner UNet gets five ids where a base one gets six.
Values come from the conditioning entry (CLIPTextEncodeSDXLRefiner sets `aesthetic_score`, `width`,
`height`); missing ones take ComfyUI's defaults: the latent's pixel size, no crop, and an aesthetic
score of 6 for the positive prompt and 2.5 for the negative.
"""

from __future__ import annotations

import torch

REFINER_TIME_KEYS = ("height", "width", "crop_h", "crop_w", "aesthetic_score")
DEFAULT_AESTHETIC_SCORE = {"positive": 6.0, "negative": 2.5}


def is_refiner_unet(unet: torch.nn.Module) -> bool:
    """Whether a diffusers UNet's add-embedding is the refiner's: the pooled width (its cross-attention
    width, one OpenCLIP-G encoder) + five time embeddings."""
    config = unet.config
    if getattr(config, "addition_embed_type", None) != "text_time":
        return False
    context = config.cross_attention_dim
    expected = context + len(REFINER_TIME_KEYS) * config.addition_time_embed_dim if isinstance(context, int) else None
    return config.projection_class_embeddings_input_dim == expected


def refiner_added_conds(
    entry: dict, batch: int, height: int, width: int, device, dtype, prompt_type: str = "positive"
) -> dict:
    """diffusers' `added_cond_kwargs` for a refiner UNet from one conditioning entry; `height` /
    `width` (the latent's pixel size) and `prompt_type` ("positive" / "negative") give the defaults."""
    pooled = entry.get("pooled_output")
    if pooled is None:
        raise ValueError("SDXL refiner conditioning has no 'pooled_output'; encode the prompt with the refiner's CLIP")
    values = {"height": height, "width": width, "crop_h": 0, "crop_w": 0}
    values["aesthetic_score"] = DEFAULT_AESTHETIC_SCORE.get(prompt_type, DEFAULT_AESTHETIC_SCORE["positive"])
    values.update({k: entry[k] for k in REFINER_TIME_KEYS if k in entry})
    time_ids = torch.tensor([[float(values[k]) for k in REFINER_TIME_KEYS]], device=device, dtype=dtype)
    return {
        "text_embeds": pooled.to(device=device, dtype=dtype).expand(batch, -1),
        "time_ids": time_ids.expand(batch, -1),
    }
