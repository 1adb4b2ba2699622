"""The embedded model's architecture: SD1.5's block structure at small widths.

UNet: 4 levels (cross-attention in the first 3, 8 heads, 2 res blocks per level, the real SD1.5
layout) at widths 32-64; VAE: the 4-level KL-f8 AutoencoderKL with 4 latent channels; text
encoder: a CLIP-L-architecture `CLIPTextModel` with CLIP's real 49408-token vocabulary (read by
the CLIP tokenizer the pack ships), small and frozen at its seeded initialisation (token embeddings
scaled up so that one word changes the context). Saved as one LDM
single-file checkpoint (`fixtures.tiny_models.save_ldm_checkpoint`), the layout users' files have.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..fixtures.tiny_models import SD15_VAE_SCALING, TinyModel, clip_text_config, save_ldm_checkpoint

TEXT_HIDDEN, TEXT_LAYERS = 32, 2
# transformers initialises token embeddings with std 0.02, far below what the random layers add:
# prompts differing in one word then give contexts with cosine similarity ~0.93 at that word.
# Token embeddings of std ~1 make each word's context nearly orthogonal to another word's.
TOKEN_EMBEDDING_SCALE = 50.0
UNET_WIDTHS = (32, 64, 64, 64)
VAE_WIDTHS = (32, 32, 64, 64)


def build_text_encoder(seed: int) -> torch.nn.Module:
    """The frozen text encoder: transformers' own initialisation (seeded), token embeddings scaled
    by `TOKEN_EMBEDDING_SCALE` so that the words, not the positions, dominate the context."""
    from transformers import CLIPTextModel

    from ..fixtures.tiny_models import CLIP_SPECIAL_IDS

    torch.manual_seed(seed)
    encoder = CLIPTextModel(clip_text_config(*CLIP_SPECIAL_IDS, TEXT_HIDDEN, TEXT_LAYERS, "quick_gelu", heads=1))
    with torch.no_grad():
        encoder.get_input_embeddings().weight.mul_(TOKEN_EMBEDDING_SCALE)
    return encoder.eval().requires_grad_(False)


def build_vae(seed: int) -> torch.nn.Module:
    """A KL-f8 AutoencoderKL in the SD layout (4 levels, 4 latent channels), one res block per level."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE_WIDTHS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=SD15_VAE_SCALING,
    )


def build_unet(seed: int) -> torch.nn.Module:
    """A UNet with SD1.5's block structure at small widths (epsilon prediction)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=UNET_WIDTHS,
        layers_per_block=2,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def save_checkpoint(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text: torch.nn.Module,
    path: str | Path,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the model as an LDM single-file checkpoint (weights in `dtype`, as released SD files)."""
    from safetensors.torch import load_file, save_file

    path = save_ldm_checkpoint(TinyModel("sd15", unet, vae, [text], layers_per_block=2), path)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return path
