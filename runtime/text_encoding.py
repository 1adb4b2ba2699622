"""Text embeddings from CLIP encoders with ComfyUI's weighting and layer rules.

Weighting: a token of weight w gets `empty + (z - empty) * w`, where `empty` is the same
position's embedding of the empty prompt (BOS, EOS, padding) — ComfyUI's rule, which keeps
weight 1 exact and moves weighted tokens away from "nothing" rather than scaling them.
Layers: SD1.5 takes the last layer after the final layer norm; SDXL takes the penultimate
layer of both encoders without it (the SDXL refiner of its one OpenCLIP-G encoder); CLIPSetLastLayer picks another (`-2` = one before last).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from .fast_mode import fast_or_eager, settings_of
from .lora_state import activate_clip_patches
from .model_types import ClipHost
from .prompt_weights import empty_tokens, tokenize_weighted


@dataclass(frozen=True)
class EncoderRule:
    """How one text encoder of a family is used (ComfyUI's per-encoder settings)."""

    pad_with_end: bool  # pad with EOS (CLIP-L) or with token 0 (OpenCLIP-G in SDXL)
    default_layer: int | None  # None: last layer, final-normed; else a hidden-state index
    normalize_hidden: bool  # apply the final layer norm to a hidden (non-last) layer
    projected_pooled: bool  # pooled output through text_projection


FAMILY_RULES = {
    "sd15": [EncoderRule(True, None, True, False)],
    "sdxl": [EncoderRule(True, -2, False, False), EncoderRule(False, -2, False, True)],
    "sdxl_refiner": [EncoderRule(False, -2, False, True)],  # OpenCLIP-G alone, as in SDXL
}


def _final_norm(encoder: torch.nn.Module) -> torch.nn.Module:
    return getattr(encoder, "text_model", encoder).final_layer_norm


@torch.no_grad()
def run_encoder(encoder, token_ids: torch.Tensor, layer: int | None, normalize_hidden: bool, projected: bool):
    """(hidden states (n, tokens, dim), pooled (n, dim)) in float32 on the encoder's device, for a batch of
    token-id rows on that device."""
    out = encoder(input_ids=token_ids, output_hidden_states=layer is not None)
    if layer is None:
        z = out.last_hidden_state
    else:
        if not -len(out.hidden_states) < layer < 0:
            raise ValueError(
                f"CLIP layer {layer} does not exist: the text encoder has {len(out.hidden_states) - 1} layers"
            )
        z = out.hidden_states[layer]
        if normalize_hidden:
            z = _final_norm(encoder)(z)
    pooled = out.text_embeds if projected else out.pooler_output
    return z.float(), pooled.float()


def encode_weighted(clip_encoder, tokenizer, text: str, rule: EncoderRule, layer_idx: int | None, fast=None):
    """One encoder's (cond (1, 77*chunks, dim), pooled (1, dim)) for a prompt, on the CPU; `fast`
    (FastModeSettings) replays the encoder's capture for this token shape."""
    pad = tokenizer.eos_token_id if rule.pad_with_end else 0
    chunks = tokenize_weighted(text, tokenizer, pad)
    ids = torch.tensor([[t for t, _ in chunk] for chunk in chunks], dtype=torch.long)
    weights = torch.tensor([[w for _, w in chunk] for chunk in chunks], dtype=torch.float32)
    has_weights = bool((weights != 1.0).any())
    if has_weights:
        ids = torch.cat([ids, torch.tensor([empty_tokens(tokenizer, pad, ids.shape[1])])])
    layer = rule.default_layer if layer_idx is None else layer_idx
    if layer_idx is not None and abs(layer_idx) > clip_encoder.config.num_hidden_layers:
        layer = None  # ComfyUI: a clip skip deeper than the encoder means "last layer"
    choice = dict(layer=layer, normalize_hidden=rule.normalize_hidden, projected=rule.projected_pooled)
    ids = ids.to(next(clip_encoder.parameters()).device)
    run = partial(run_encoder, clip_encoder, **choice)
    z, pooled = (
        t.cpu() for t in fast_or_eager(fast, "text_encoder", clip_encoder, run, (ids,), extra=tuple(choice.values()))
    )
    if has_weights:
        empty, z = z[-1:], z[:-1]
        w = weights[..., None]
        z = torch.where(w != 1.0, empty + (z - empty) * w, z)
    return z.reshape(1, -1, z.shape[-1]), pooled[0:1]


def encode_prompt(clip: ClipHost, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CONDITIONING tensor and pooled output for `text`, as ComfyUI's CLIPTextEncode computes them."""
    if clip.family not in FAMILY_RULES:
        raise ValueError(f"no text-encoding rules for model family {clip.family!r}")
    rules = FAMILY_RULES[clip.family]
    activate_clip_patches(clip)
    outputs = [
        encode_weighted(encoder, clip.tokenizer, text, rule, clip.layer_idx, settings_of(clip))
        for encoder, rule in zip(clip.text_encoders, rules)
    ]
    if len(outputs) == 1:
        return outputs[0]
    shortest = min(z.shape[1] for z, _ in outputs)
    cond = torch.cat([z[:, :shortest] for z, _ in outputs], dim=-1)
    return cond, outputs[-1][1]
