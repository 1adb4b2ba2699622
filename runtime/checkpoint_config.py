"""Model family detection, key-layout normalisation and diffusers configs inferred from LDM
checkpoint tensor shapes.

Layouts: the text encoders and VAE of SD1.5 / SDXL / SSD-1B files come in several key layouts, all
of which ComfyUI maps onto one model (its `supported_models.process_clip_state_dict`,
`utils.clip_text_transformers_convert` and the diffusers-VAE conversion in `sd.VAE`); here each is
brought to transformers' / diffusers' names (`clip_l_state`, `open_clip_state`, `vae_weights`).

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
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner's only text encoder
SCALING_FACTORS = {"sd15": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}
# SDXL's add-embedding input: pooled text + this many 256-wide sinusoidal embeddings (ComfyUI's
# encode_adm): base (height, width, crop_h, crop_w, target_height, target_width); refiner (height,
# width, crop_h, crop_w, aesthetic_score)
ADM_EMBEDDINGS = {"sdxl": 6, "sdxl_refiner": 5}
SD15_HEADS = 8
HEAD_DIM = 64


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this loader understands; the message says why."""


def detect_family(state: dict[str, torch.Tensor], name: str) -> str:
    """ "sd15", "sdxl" (SSD-1B included) or "sdxl_refiner" from the text-encoder key prefixes, in every
    layout ComfyUI normalises (see `clip_l_state`, `open_clip_state`); a clear error for anything
    else, saying which key prefixes the file has."""
    has_unet = any(k.startswith(UNET_PREFIX) for k in state)
    if not has_unet:
        raise CheckpointFormatError(
            f"{name}: no 'model.diffusion_model.*' keys; this is not a full LDM checkpoint "
            "(a LoRA, a VAE-only or a UNet-only file belongs in another folder); "
            f"found {found_prefixes(state)}."
        )
    if _has_prefix(state, SDXL_CLIP_G_PREFIX) and _has_prefix(state, SDXL_CLIP_L_PREFIX):
        return "sdxl"
    if _has_prefix(state, SD15_CLIP_PREFIX):
        return "sd15"
    if _has_prefix(state, "cond_stage_model.model."):
        raise CheckpointFormatError(f"{name}: looks like an SD2.x checkpoint (OpenCLIP-H text encoder); not supported.")
    if _has_prefix(state, REFINER_CLIP_G_PREFIX) and not _has_prefix(state, "conditioner.embedders.1."):
        return "sdxl_refiner"
    raise CheckpointFormatError(
        f"{name}: unknown model family: no SD1.5 'cond_stage_model.transformer.*', SDXL "
        "'conditioner.embedders.{0.transformer,1.model}.*' nor SDXL-refiner 'conditioner.embedders.0.model.*' "
        f"text-encoder keys; found {found_prefixes(state)}."
    )


def found_prefixes(state: dict[str, torch.Tensor], depth: int = 3, limit: int = 8) -> str:
    """The first `depth` dotted parts of the keys, with counts (for errors about unknown files)."""
    counts: dict[str, int] = {}
    for key in state:
        prefix = ".".join(key.split(".")[:depth])
        counts[prefix] = counts.get(prefix, 0) + 1
    shown = [f"'{p}.*' ({n})" for p, n in sorted(counts.items())[:limit]]
    more = f" and {len(counts) - limit} more" if len(counts) > limit else ""
    return (", ".join(shown) + more) if shown else "no tensors"


def _has_prefix(state: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def prediction_type(state: dict[str, torch.Tensor]) -> str:
    """ "v_prediction" for checkpoints that carry ComfyUI's `v_pred` marker key (written by its
    CheckpointSave for v-prediction models and by many v-pred fine-tunes), else "epsilon"."""
    return "v_prediction" if "v_pred" in state else "epsilon"


def clip_l_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIP-L weights under `prefix` with transformers names (`text_model.*`), from either layout
    checkpoints use: with the `text_model.` level (transformers >= 4.2x) or without it (older
    files), as ComfyUI's SD1.5 loader accepts both. Position ids (present or not, int or float) are
    computed, never read; `text_projection` / `logit_scale` (unused by SD's CLIP-L) are dropped."""
    out = {}
    for key, value in strip_prefix(state, prefix).items():
        if key.endswith("position_ids") or key in ("text_projection.weight", "text_projection", "logit_scale"):
            continue
        out[key if key.startswith("text_model.") else "text_model." + key] = value
    return out


def open_clip_state(state: dict[str, torch.Tensor], prefix: str, name: str) -> dict[str, torch.Tensor]:
    """OpenCLIP-G weights under `prefix` (SDXL's `conditioner.embedders.1.model.`) with transformers
    names: the OpenCLIP layout (fused q/k/v `in_proj`, `text_projection` stored transposed) through
    diffusers' converter, or weights already in transformers' layout under `prefix + "transformer."`
    (ComfyUI maps both to the same model); a projection saved as a Linear weight is taken as is."""
    if f"{prefix}transformer.text_model.embeddings.token_embedding.weight" in state:
        out = clip_l_state(state, prefix + "transformer.")
    else:
        out = _convert_open_clip(state, prefix, name)
    for key, transpose in (
        (f"{prefix}text_projection", True),
        (f"{prefix}text_projection.weight", False),
        (f"{prefix}transformer.text_projection.weight", False),
    ):
        if key in state and "text_projection.weight" not in out:
            out["text_projection.weight"] = state[key].T.contiguous() if transpose else state[key]
    return out


def _convert_open_clip(state: dict[str, torch.Tensor], prefix: str, name: str) -> dict[str, torch.Tensor]:
    """diffusers' `convert_open_clip_checkpoint`; it wants a model only for its width (the q/k/v split
    when the file has no transposed `text_projection`), read here from the token embedding."""
    from types import SimpleNamespace

    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    embedding = f"{prefix}token_embedding.weight"
    if embedding not in state:
        raise CheckpointFormatError(f"{name}: the OpenCLIP text encoder under '{prefix}' has no '{embedding}'")
    width = int(state[embedding].shape[1])
    return convert_open_clip_checkpoint(
        SimpleNamespace(config=SimpleNamespace(hidden_size=width)), state, prefix=prefix
    )


def vae_weights(state: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The VAE weights under `first_stage_model.` without the prefix, and whether they already carry
    diffusers' `AutoencoderKL` names (some checkpoints embed a diffusers VAE; ComfyUI converts those,
    here they load directly). Deprecated diffusers attention names (`query`, `key`, `value`,
    `proj_attn`) are renamed and 1x1-conv attention weights flattened to the Linear shape."""
    vae = strip_prefix(state, VAE_PREFIX)
    if not vae:
        raise CheckpointFormatError(f"{name}: no '{VAE_PREFIX}*' (VAE) keys in the checkpoint")
    if "decoder.up_blocks.0.resnets.0.norm1.weight" not in vae:
        return vae, False
    renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for key, value in vae.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        if ".attentions." in key and key.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[key] = value
    return out, True


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


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
        level_depths = [
            _transformer_depth(unet, f"input_blocks.{1 + level * per_level + i}") for i in range(layers_per_block)
        ]
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
        "sample_size": 64 if family == "sd15" else 128,
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
    if not has_attention[-1] and mid_depth:
        # diffusers' middle block takes the last level's depth; a last level without attention
        # (the SDXL refiner: depths 0, 4, 4, 0 and a middle of 4) ignores its own, so it carries the middle's
        config["transformer_layers_per_block"][-1] = mid_depth
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
        count = ADM_EMBEDDINGS.get(family, ADM_EMBEDDINGS["sdxl"])
        if pooled_dim is None or adm_in <= pooled_dim or (adm_in - pooled_dim) % count:
            raise CheckpointFormatError(
                f"UNet add-embedding input ({adm_in}) does not match the text encoder's pooled width ({pooled_dim}) "
                f"plus {count} size embeddings ({family})."
            )
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm_in - pooled_dim) // count,
            projection_class_embeddings_input_dim=adm_in,
        )
    return config


def infer_vae_config(vae: dict[str, torch.Tensor], family: str, diffusers_names: bool = False) -> dict:
    """An `AutoencoderKL` config from VAE tensors (keys without `first_stage_model.`), in LDM names
    or, with `diffusers_names`, in diffusers' own."""
    if diffusers_names:
        levels = _indices(vae, r"encoder\.down_blocks\.(\d+)\.")
        channels = [int(vae[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in levels]
        layers = len(_indices(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
    else:
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
