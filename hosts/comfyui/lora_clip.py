"""LoRA text-encoder parts on the ComfyUI host: CLIP clone + ComfyUI's own patches.

A LoRA's `lora_te_*` / `lora_te1_*` / `lora_te2_*` (kohya) or `text_encoder.*` / `text_encoder_2.*`
(diffusers) modules are applied exactly as ComfyUI's core `LoraLoader` applies them: the names are
mapped with `comfy.lora.model_lora_keys_clip` onto the CLIP's own state-dict keys, the patches are
built by `comfy.lora.load_lora` (so every adapter type ComfyUI knows, LoRA / LoHa / LoKr / DoRA /
diff, works) and added to a `CLIP.clone()` with `add_patches(patches, strength)`. The text encoders
are small next to the UNet, so they keep ComfyUI's one patch per LoRA (no combined patch).

Unlike the core loader, which logs "NOT LOADED" and goes on, a text-encoder module that has no
weight in this CLIP (e.g. an SDXL LoRA's `lora_te2_` part on an SD1.5 CLIP) is refused, naming the
file, before anything is cloned: the input CLIP is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import comfy.lora
import comfy.lora_convert
import comfy.utils

from ...lora_merge import LoraFile, LoraPatchError

# key prefixes of text-encoder tensors that ComfyUI's CLIP key map knows (kohya, diffusers, generic)
TEXT_ENCODER_PREFIXES = (
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "lora_te3_",
    "lora_prior_te_",
    "text_encoder.",
    "text_encoder_2.",
    "text_encoders.",
)

ClipLora = tuple[str, LoraFile, float]  # (path, parsed file, clip strength)


def text_encoder_tensors(path: str | Path) -> dict:
    """The file's text-encoder tensors only (a safetensors file is read key by key, so a large UNet
    part is never loaded for the CLIP)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(TEXT_ENCODER_PREFIXES)}
    tensors = comfy.utils.load_torch_file(path, safe_load=True)
    return {key: value for key, value in tensors.items() if key.startswith(TEXT_ENCODER_PREFIXES)}


def _unmapped(tensors: dict, key_map: dict) -> list[str]:
    """Tensor names whose module (a prefix ending before a '.') is not in ComfyUI's key map."""
    missing = []
    for key in tensors:
        cuts = [i for i, char in enumerate(key) if char == "."]
        if not any(key[:i] in key_map for i in cuts):
            missing.append(key)
    return missing


def clip_patches(clip, path: str | Path, lora: LoraFile) -> dict:
    """{CLIP state-dict key: ComfyUI weight patch} for the file's text-encoder part; {} when it has none.
    Refuses a text-encoder module this CLIP has no weight for, naming the file and the module."""
    path = str(path)
    if not path.endswith(".safetensors") and not lora.text_encoders:
        return {}  # a pickled file is read whole: only when the parsed file has text-encoder modules
    tensors = text_encoder_tensors(path)
    if not tensors:
        return {}
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    missing = _unmapped(tensors, key_map)
    name = os.path.basename(path)
    if missing:
        raise LoraPatchError(
            f"LoRA '{name}': {len(missing)} text-encoder tensor(s) have no weight in this CLIP "
            f"(first: {missing[0]!r}); is the LoRA for another model family?"
        )
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(tensors), key_map, log_missing=False)
    if not patches:
        raise LoraPatchError(f"LoRA '{name}': none of its text-encoder tensors is a patch ComfyUI can load")
    return patches


def add_clip_loras(clip, loras: Sequence[ClipLora]):
    """A clone of ComfyUI's CLIP `clip` with each LoRA's text-encoder part added at its strength, in
    order (as chained core LoraLoaders add them). LoRAs without a text-encoder part, or strength 0, add
    nothing; when nothing is added the input CLIP itself is returned. Every file is checked before the
    clone exists."""
    planned = [
        (clip_patches(clip, path, lora), float(strength)) for path, lora, strength in loras if float(strength) != 0.0
    ]
    planned = [(patches, strength) for patches, strength in planned if patches]
    if not planned:
        return clip
    clone = clip.clone()
    for patches, strength in planned:
        added = clone.add_patches(patches, strength)
        if len(added) != len(patches):
            missing = sorted(set(patches) - set(added))
            raise LoraPatchError(f"ComfyUI's CLIP has no weight {missing[0]!r} ({len(missing)} text-encoder targets)")
    return clone
