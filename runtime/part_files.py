"""Model parts from their own files (what ComfyUI's VAELoader, UNETLoader, CLIPLoader and
DualCLIPLoader read): a UNet file in LDM names, a VAE file in LDM or diffusers names, the TAESD tiny
autoencoders (madebyollin's `taesd_encoder` / `taesd_decoder` files, SD1.5's `taesd` and SDXL's
`taesdxl`), and split text-encoder files (`clip_l.safetensors`, `clip_g.safetensors`).

A text-encoder file is OpenAI CLIP-L or OpenCLIP-G in transformers names (`text_model.*`), in
OpenCLIP names (`transformer.resblocks.*`, always OpenCLIP-G here), or either under a checkpoint's
prefix (`cond_stage_model.transformer.`, `conditioner.embedders.N.*`). Which encoder a
transformers-named file holds follows ComfyUI's rule, by depth: 31+ layers is OpenCLIP-G, 23+ is
OpenCLIP-H (SD2.x, refused), fewer is CLIP-L. The CLIP built is the one a checkpoint of that
family gives (`checkpoints.build_clip`), so text encoding, clip skip and LoRAs treat both alike.

A TAESD pair becomes a diffusers `AutoencoderTiny` behind `TinyVaeCodec`, which speaks the
AutoencoderKL interface `vae_codec` uses on unscaled latents: TAESD itself works on scaled
latents (latent * the family's scaling factor), so the codec scales on the way in and out, as
ComfyUI's TAESD wrapper does. Loaded parts are cached by (paths, modification times, placement).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_config import (
    ADM_EMBEDDINGS,
    REFINER_CLIP_G_PREFIX,
    SD15_CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointFormatError,
    clip_l_state,
    found_prefixes,
    infer_unet_config,
    infer_vae_config,
    open_clip_state,
    strip_prefix,
    vae_weights,
)
from .devices import Placement, current_placement
from .model_types import SD_NOISE_SCHEDULE, ClipHost, ModelHost, VaeHost

TAESD_FAMILIES = {"taesd": "sd15", "taesdxl": "sdxl"}  # ComfyUI's VAELoader names -> model family
TAESD_SCALING = {"sd15": 0.18215, "sdxl": 0.13025}
SD2_CONTEXT_WIDTH = 1024  # OpenCLIP-H: SD2.x, which the standalone host does not run
SDXL_TIME_IDS_WIDTH = 6 * 256  # SDXL's label embedding input: pooled text + six 256-wide size embeddings
_CACHE: dict[tuple, VaeHost] = {}


def _cache_key(paths: tuple[Path, ...], placement: Placement) -> tuple:
    return tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in paths) + (placement.key(),)


def load_vae_file(path: str | Path, placement: Placement | None = None) -> VaeHost:
    """VAE from a file of its own (keys with or without `first_stage_model.`; LDM or diffusers
    names). The file does not say which family it is for; SD1.5's and SDXL's VAEs share the
    architecture, and the sampler takes the latent scale from the MODEL, so "sd15" is recorded."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from .checkpoints import build_with_weights, read_state_dict

    placement = current_placement() if placement is None else placement
    path = Path(path)
    key = _cache_key((path,), placement)
    if key not in _CACHE:
        state = read_state_dict(path)
        if not any(k.startswith(VAE_PREFIX) for k in state):
            state = {VAE_PREFIX + k: v for k, v in state.items()}
        if "encoder.conv_in.weight" not in strip_prefix(state, VAE_PREFIX):
            raise CheckpointFormatError(f"{path.name}: not a VAE (no 'encoder.conv_in.weight')")
        vae_state, diffusers_names = vae_weights(state, path.name)
        config = infer_vae_config(vae_state, "sd15", diffusers_names)
        if not diffusers_names:
            vae_state = convert_ldm_vae_checkpoint(state, config)
        vae = build_with_weights(
            lambda: AutoencoderKL(**config), vae_state, "VAE", path.name, placement.device, placement.vae_dtype
        )
        _CACHE[key] = VaeHost(vae=vae, scaling_factor=config["scaling_factor"], family="sd15")
    return _CACHE[key]


@dataclass
class _Output:
    sample: torch.Tensor


class _Mode:
    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    def mode(self) -> torch.Tensor:
        return self.latents


@dataclass
class _EncoderOutput:
    latent_dist: _Mode


class TinyVaeCodec(torch.nn.Module):
    """AutoencoderTiny with AutoencoderKL's decode / encode on unscaled latents."""

    def __init__(self, tiny: torch.nn.Module, scaling_factor: float):
        super().__init__()
        self.tiny, self.scaling_factor = tiny, float(scaling_factor)

    def decode(self, latents: torch.Tensor) -> _Output:
        return _Output(self.tiny.decode(latents * self.scaling_factor).sample)

    def encode(self, pixels: torch.Tensor) -> _EncoderOutput:
        return _EncoderOutput(_Mode(self.tiny.encode(pixels).latents / self.scaling_factor))


def taesd_to_diffusers(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """madebyollin's TAESD keys (`<layer index>.<rest>` of two nn.Sequential) as AutoencoderTiny's:
    the encoder's layers keep their index; the decoder's shift down by one, because its first layer
    (the tanh clamp) is part of diffusers' forward, not a layer."""
    out = {f"encoder.layers.{k}": v for k, v in encoder.items()}
    for key, value in decoder.items():
        match = re.match(r"(\d+)\.(.*)", key)
        if match is None or int(match.group(1)) < 1:
            raise CheckpointFormatError(f"TAESD decoder key {key!r} is not a layer of madebyollin's decoder")
        out[f"decoder.layers.{int(match.group(1)) - 1}.{match.group(2)}"] = value
    return out


def load_taesd(name: str, encoder_path: str | Path, decoder_path: str | Path, placement: Placement | None = None):
    """VAE from a TAESD encoder + decoder pair (`name`: "taesd" for SD1.5, "taesdxl" for SDXL)."""
    from diffusers import AutoencoderTiny

    from .checkpoints import build_with_weights, read_state_dict

    if name not in TAESD_FAMILIES:
        raise ValueError(f"unknown TAESD {name!r}; choose from {', '.join(TAESD_FAMILIES)}")
    placement = current_placement() if placement is None else placement
    paths = (Path(encoder_path), Path(decoder_path))
    key = _cache_key(paths, placement)
    if key not in _CACHE:
        state = taesd_to_diffusers(read_state_dict(paths[0]), read_state_dict(paths[1]))
        family = TAESD_FAMILIES[name]
        tiny = build_with_weights(
            AutoencoderTiny, state, "TAESD", f"{paths[0].name} + {paths[1].name}", placement.device, placement.vae_dtype
        )
        codec = TinyVaeCodec(tiny, TAESD_SCALING[family]).eval()
        _CACHE[key] = VaeHost(vae=codec, scaling_factor=TAESD_SCALING[family], family=family)
    return _CACHE[key]


def unet_family(unet: dict[str, torch.Tensor], name: str) -> tuple[str, int | None]:
    """(family, pooled text width or None) of LDM UNet tensors: SDXL's UNet has the label embedding
    of pooled text + six size embeddings (256 wide each, as in every SDXL model), SD1.5's has none;
    the SDXL refiner's attends to its one OpenCLIP-G encoder, so its label embedding is that width +
    five embeddings (ComfyUI tells it by these shapes too); SD2.x's (1024-wide cross-attention) is refused."""
    widths = sorted({int(v.shape[1]) for k, v in unet.items() if k.endswith("attn2.to_k.weight")})
    if "label_emb.0.0.weight" in unet:
        adm_in = int(unet["label_emb.0.0.weight"].shape[1])
        refiner = ADM_EMBEDDINGS["sdxl_refiner"]
        if len(widths) == 1 and adm_in > widths[0] and (adm_in - widths[0]) % refiner == 0:
            return "sdxl_refiner", widths[0]
        return "sdxl", adm_in - SDXL_TIME_IDS_WIDTH
    if widths == [SD2_CONTEXT_WIDTH]:
        raise CheckpointFormatError(f"{name}: looks like an SD2.x UNet (1024-wide cross-attention); not supported")
    if len(widths) != 1:
        raise CheckpointFormatError(f"{name}: not an SD1.5 / SDXL UNet (cross-attention widths {widths})")
    return "sd15", None


def load_unet_file(path: str | Path, placement: Placement | None = None) -> ModelHost:
    """MODEL from a UNet-only file (LDM names, with or without `model.diffusion_model.`), SD1.5 or
    SDXL by its cross-attention width; an epsilon-prediction model, as ComfyUI assumes for these."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from .checkpoints import build_with_weights, read_state_dict

    placement = current_placement() if placement is None else placement
    path = Path(path)
    key = _cache_key((path,), placement)
    if key not in _CACHE:
        state = read_state_dict(path)
        if not any(k.startswith(UNET_PREFIX) for k in state):
            state = {UNET_PREFIX + k: v for k, v in state.items()}
        unet_ldm = strip_prefix(state, UNET_PREFIX)
        if "input_blocks.0.0.weight" not in unet_ldm:
            if "conv_in.weight" in unet_ldm:
                raise CheckpointFormatError(
                    f"{path.name}: a UNet in diffusers names; put its diffusers folder in models/diffusers "
                    "and load it with DiffusersLoader"
                )
            raise CheckpointFormatError(f"{path.name}: not a UNet (no 'input_blocks.0.0.weight')")
        family, pooled_dim = unet_family(unet_ldm, path.name)
        config = infer_unet_config(unet_ldm, family, pooled_dim)
        unet = build_with_weights(
            lambda: UNet2DConditionModel(**config),
            convert_ldm_unet_checkpoint(state, config),
            "UNet",
            path.name,
            placement.device,
            placement.unet_dtype,
        )
        _CACHE[key] = ModelHost(unet=unet, family=family, noise_schedule=dict(SD_NOISE_SCHEDULE))
    return _CACHE[key].clone()


# prefixes a text-encoder file may carry (a checkpoint's, or ComfyUI's own `clip_l.` / `clip_g.`)
TEXT_ENCODER_PREFIXES = (
    SD15_CLIP_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SDXL_CLIP_G_PREFIX,
    REFINER_CLIP_G_PREFIX,
    "clip_l.transformer.",
    "clip_g.transformer.",
    "clip_l.",
    "clip_g.",
)
CLIP_G_MIN_LAYERS, CLIP_H_MIN_LAYERS = 31, 23  # ComfyUI's detect_te_model: layer 30 / layer 22 present
# the CLIP types each loader runs headless -> the encoder kinds it takes, in ClipHost order -> family
CLIP_TYPES: dict[str, dict[tuple[str, ...], str]] = {
    "stable_diffusion": {("clip_l",): "sd15", ("clip_g",): "sdxl_refiner"},
    "sdxl": {("clip_l", "clip_g"): "sdxl"},
}
_CLIP_CACHE: dict[tuple, ClipHost] = {}


def _layer_count(text: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[3] for k in text if k.startswith("text_model.encoder.layers.")})


def text_encoder_weights(state: dict[str, torch.Tensor], name: str) -> tuple[str, dict[str, torch.Tensor]]:
    """("clip_l" or "clip_g", the weights in transformers names) of one text-encoder file."""
    prefix = next((p for p in TEXT_ENCODER_PREFIXES if any(k.startswith(p) for k in state)), "")
    if f"{prefix}token_embedding.weight" in state or f"{prefix}transformer.resblocks.0.ln_1.weight" in state:
        return "clip_g", open_clip_state(state, prefix, name)  # OpenCLIP names
    text = clip_l_state(state, prefix)
    if "text_model.embeddings.token_embedding.weight" not in text:
        raise CheckpointFormatError(
            f"{name}: not a CLIP text encoder (no 'text_model.embeddings.token_embedding.weight' nor OpenCLIP "
            f"'token_embedding.weight'); found {found_prefixes(state)}"
        )
    layers = _layer_count(text)
    if layers < CLIP_H_MIN_LAYERS:
        return "clip_l", text
    if layers < CLIP_G_MIN_LAYERS:
        raise CheckpointFormatError(f"{name}: an OpenCLIP-H text encoder ({layers} layers, SD2.x); not supported")
    for key, transpose in ((f"{prefix}text_projection.weight", False), (f"{prefix}text_projection", True)):
        if key in state:
            text["text_projection.weight"] = state[key].T.contiguous() if transpose else state[key]
            return "clip_g", text
    raise CheckpointFormatError(f"{name}: an OpenCLIP-G text encoder without 'text_projection.weight'")


def load_text_encoder_files(paths: list[str | Path], clip_type: str, placement: Placement | None = None) -> ClipHost:
    """CLIP from split text-encoder files, as ComfyUI's CLIPLoader (one file) and DualCLIPLoader (two)
    build it for `clip_type`: "stable_diffusion" takes CLIP-L (SD1.5's CLIP) or OpenCLIP-G (the SDXL
    refiner's), "sdxl" takes CLIP-L + OpenCLIP-G in either order. Cached by files and placement."""
    from .checkpoints import build_clip, read_state_dict, resolve_tokenizer

    if clip_type not in CLIP_TYPES:
        raise ValueError(f"CLIP type {clip_type!r} is not supported headless; choose from {', '.join(CLIP_TYPES)}")
    placement = current_placement() if placement is None else placement
    files = tuple(Path(p) for p in paths)
    key = _cache_key(files, placement) + (clip_type,)
    if key not in _CLIP_CACHE:
        found = [text_encoder_weights(read_state_dict(path), path.name) for path in files]
        by_kind = dict(found)
        kinds = tuple(sorted(by_kind, key=lambda kind: kind != "clip_l"))  # CLIP-L first, as ClipHost orders them
        family = CLIP_TYPES[clip_type].get(kinds) if len(by_kind) == len(found) else None
        if family is None:
            names = ", ".join(f"{path.name} ({kind})" for path, (kind, _) in zip(files, found))
            wanted = " or ".join(" + ".join(k) for k in CLIP_TYPES[clip_type])
            raise CheckpointFormatError(f"CLIP type {clip_type!r} takes {wanted}; got {names}")
        _CLIP_CACHE[key] = build_clip(
            family,
            [by_kind[k] for k in kinds],
            resolve_tokenizer(files[0]),
            " + ".join(path.name for path in files),
            placement,
        )
    return _CLIP_CACHE[key].clone()
