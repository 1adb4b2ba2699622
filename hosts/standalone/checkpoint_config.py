"""Model family detection and diffusers configs inferred from LDM checkpoint tensor shapes.

Nothing is fetched from a hub: every width, depth and channel count is read from the tensors,
so tiny test checkpoints and real ones take the same path. What the shapes cannot tell
(attention heads) follows the family convention: SD1.5 uses 8 heads per block, SDXL (and
OpenCLIP/CLIP text encoders) a head dimension of 64.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SCALING_FACTORS = {"sd15": 0.18215, "sdxl": 0.13025}
SD15_HEADS = 8
HEAD_DIM = 64


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this loader understands; the message says why."""


def detect_family(state: dict[str, torch.Tensor], name: str) -> str:
    """"sd15" or "sdxl" from the key names; a clear error for anything else."""
    has_unet = any(k.startswith(UNET_PREFIX) for k in state)
    if not has_unet:
        raise CheckpointFormatError(
            f"{name}: no 'model.diffusion_model.*' keys; this is not a full LDM checkpoint "
            "(a LoRA, a VAE-only or a UNet-only file belongs in another folder)."
        )
    if f"{SDXL_CLIP_G_PREFIX}transformer.resblocks.0.attn.in_proj_weight" in state:
        return "sdxl"
    if f"{SD15_CLIP_PREFIX}text_model.embeddings.token_embedding.weight" in state:
        return "sd15"
    if any(k.startswith("cond_stage_model.model.") for k in state):
        raise CheckpointFormatError(f"{name}: looks like an SD2.x checkpoint (OpenCLIP-H text encoder); not supported.")
    raise CheckpointFormatError(
        f"{name}: unknown model family (no SD1.5 'cond_stage_model.transformer.*' nor SDXL "
        "'conditioner.embedders.*' text-encoder keys)."
    )


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _transformer_depth(unet: dict[str, torch.Tensor], block: str) -> int:
    return len(_indices(unet, re.escape(block) + r"\.1\.transformer_blocks\.(\d+)\."))


def infer_unet_config(unet: dict[str, torch.Tensor], family: str, pooled_dim: int | None) -> dict:
    """A `UNet2DConditionModel` config from LDM UNet tensors (keys without the UNet prefix)."""
    conv_in = unet["input_blocks.0.0.weight"]
    downsamplers = _indices(unet, r"input_blocks\.(\d+)\.0\.op\.weight")
    input_blocks = _indices(unet, r"input_blocks\.(\d+)\.")
    if downsamplers:
        layers_per_block = downsamplers[0] - 1
    else:
        layers_per_block = len(input_blocks) - 1
    num_levels = len(downsamplers) + 1
    per_level = layers_per_block + 1

    channels, has_attention, depths = [], [], []
    for level in range(num_levels):
        first = f"input_blocks.{1 + level * per_level}"
        channels.append(int(unet[f"{first}.0.out_layers.3.weight"].shape[0]))
        level_depths = [_transformer_depth(unet, f"input_blocks.{1 + level * per_level + i}") for i in range(layers_per_block)]
        has_attention.append(level_depths[0] > 0)
        depths.append(level_depths[0] if len(set(level_depths)) == 1 else level_depths)

    up_depths = []
    for level in range(num_levels):
        level_depths = [_transformer_depth(unet, f"output_blocks.{level * per_level + i}") for i in range(per_level)]
        up_depths.append(level_depths)
    mid_depth = _transformer_depth(unet, "middle_block")

    attn_keys = [k for k in unet if k.endswith("attn2.to_k.weight")]
    if not attn_keys:
        raise CheckpointFormatError("UNet has no cross-attention (attn2) layers; not an SD1.5/SDXL UNet.")
    context_dim = int(unet[attn_keys[0]].shape[1])
    proj_in = next(v for k, v in unet.items() if k.endswith(".proj_in.weight"))

    if family == "sd15":
        heads: int | list[int] = SD15_HEADS
    else:
        heads = [max(c // HEAD_DIM, 1) for c in channels]

    config = {
        "sample_size": 128 if family == "sdxl" else 64,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(unet["out.2.weight"].shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": proj_in.ndim == 2,
        "transformer_layers_per_block": [(d or 1) if isinstance(d, int) else d for d in depths],
    }
    reversed_down = [[d if isinstance(d, int) else d[0]] * per_level for d in reversed(depths)]
    actual_up = [[d if d else 1 for d in level] for level in up_depths]
    expected_up = [[d if d else 1 for d in level] for level in reversed_down]
    if actual_up != expected_up:
        config["reverse_transformer_layers_per_block"] = actual_up
    last = config["transformer_layers_per_block"][-1]
    last = last if isinstance(last, int) else last[-1]
    if len(set(map(str, config["transformer_layers_per_block"]))) == 1 and isinstance(last, int):
        config["transformer_layers_per_block"] = last  # one depth everywhere (SD1.5): diffusers' int form
    if not mid_depth and not any(k.startswith("middle_block.1.") for k in unet):
        config["mid_block_type"] = "UNetMidBlock2D"  # one ResBlock, no attention (SSD-1B)
    if mid_depth and mid_depth != last:
        raise CheckpointFormatError(
            f"UNet middle block has {mid_depth} transformer layers but the last level has {last}; "
            "diffusers' UNet2DConditionModel cannot represent this layout."
        )
    if "label_emb.0.0.weight" in unet:
        adm_in = int(unet["label_emb.0.0.weight"].shape[1])
        if pooled_dim is None or (adm_in - pooled_dim) % 6:
            raise CheckpointFormatError(
                f"UNet add-embedding input ({adm_in}) does not match the text encoder's pooled width ({pooled_dim})."
            )
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm_in - pooled_dim) // 6,
            projection_class_embeddings_input_dim=adm_in,
        )
    return config


def infer_vae_config(vae: dict[str, torch.Tensor], family: str) -> dict:
    """An `AutoencoderKL` config from LDM VAE tensors (keys without `first_stage_model.`)."""
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    channels = [int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    layers = len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\."))
    return {
        "in_channels": int(vae["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(vae["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(vae["post_quant_conv.weight"].shape[1]),
        "sample_size": 1024 if family == "sdxl" else 512,
        "scaling_factor": SCALING_FACTORS[family],
    }


def infer_clip_config(text: dict[str, torch.Tensor], hidden_act: str, bos: int, eos: int) -> dict:
    """A transformers `CLIPTextConfig` dict from HF-named text-encoder tensors."""
    tokens = text["text_model.embeddings.token_embedding.weight"]
    hidden = int(tokens.shape[1])
    config = {
        "vocab_size": int(tokens.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(text["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": len(_indices(text, r"text_model\.encoder\.layers\.(\d+)\.")),
        "num_attention_heads": max(hidden // HEAD_DIM, 1),
        "max_position_embeddings": int(text["text_model.embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": hidden_act,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    if "text_projection.weight" in text:
        config["projection_dim"] = int(text["text_projection.weight"].shape[0])
    return config
