"""LoRA on the ComfyUI host: N adapters become ONE low-rank patch per weight on a ModelPatcher clone.

The patch goes through ComfyUI's own mechanism (`ModelPatcher.add_patches`), so it composes with
ComfyUI's LoRA loaders and hooks, low-VRAM on-the-fly patching and model management: ComfyUI
decides when and on which device weights are patched and backed up. What we change is the patch:
ComfyUI adds one (up @ down) product, scaling pass and addition per adapter per weight; a
`CombinedLoraPatch` carries the adapters' factors concatenated (rank r1 + r2 + ..., weights and
alpha / rank folded into `down`, see `lora_merge.mix_cat`) and lands with one fused `addmm_` into
the weight ComfyUI hands it. With `rank`, the mix is SVD-compressed to that rank first.
"""
from __future__ import annotations

from collections.abc import Sequence

import comfy.model_management
import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ...lora_merge import LoraFile, LoraPatchError, LowRankPatch, TargetIndex, mix, plan_targets
from ..lora_files import merge_duplicate_files
from .unpatched import unpatched_parameters

MODEL_KEY_PREFIX = "diffusion_model."  # ModelPatcher keys are the BaseModel's state-dict names


class CombinedLoraPatch(WeightAdapterBase):
    """One weight's mixed LoRA delta, (up @ down).reshape(shape), as a ComfyUI weight adapter."""

    name = "lcm_accel_combined_lora"

    def __init__(self, key: str, patch: LowRankPatch):
        self.loaded_keys = {key}
        self.patch = patch
        self.weights = [patch.up, patch.down]

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        """weight + strength * delta, in place (ComfyUI passes its float working copy of the weight)."""
        up = comfy.model_management.cast_to_device(self.patch.up, weight.device, intermediate_dtype)
        down = comfy.model_management.cast_to_device(self.patch.down, weight.device, intermediate_dtype)
        if weight.numel() != up.shape[0] * down.shape[1]:
            raise LoraPatchError(f"{key}: the LoRA mix patches {tuple(self.patch.shape)}, the weight is "
                                 f"{tuple(weight.shape)}")
        if _is_identity(function, weight) and weight.dtype == intermediate_dtype and weight.is_contiguous():
            weight.view(weight.shape[0], -1).addmm_(up, down, alpha=float(strength))
        else:
            delta = torch.mm(up, down).reshape(weight.shape)
            weight += function((float(strength) * delta).type(weight.dtype))
        return weight


def _is_identity(function, like: torch.Tensor) -> bool:
    """ComfyUI passes an identity function unless a patch key carries its own; probe it."""
    probe = like.new_empty(0)
    return function(probe) is probe


def combined_patches(model, adapters: Sequence[tuple[LoraFile, float]], rank: int | None = None) -> dict:
    """{ModelPatcher key: CombinedLoraPatch} for the adapters on `model`'s diffusion model, after the
    same checks as the in-place patcher (names, shapes, family, finite factors). Touches no weight."""
    params = unpatched_parameters(model)  # a quantized clone still loaded must not hide the float layers
    files, weights = merge_duplicate_files(adapters)
    plan, _ = plan_targets(TargetIndex(list(params)), params, list(zip(files, weights)), strict=True,
                           check_dtypes=False)
    patches = {}
    for target in plan:
        key = MODEL_KEY_PREFIX + target.param_name
        patches[key] = CombinedLoraPatch(key, mix([(factors, weights[i]) for i, factors in target.parts], rank))
    return patches


def add_loras(model, adapters: Sequence[tuple[LoraFile, float]], rank: int | None = None):
    """A clone of the ModelPatcher `model` with the adapters added as one combined patch per weight.
    A bad LoRA raises before the clone exists: the input MODEL is never changed."""
    if rank is not None and rank < 1:
        raise LoraPatchError(f"rank must be a positive integer or None, got {rank!r}")
    patches = combined_patches(model, adapters, rank)
    clone = model.clone()
    added = clone.add_patches(patches, 1.0)
    if len(added) != len(patches):
        missing = sorted(set(patches) - set(added))
        raise LoraPatchError(f"ComfyUI's model has no weight {missing[0]!r} ({len(missing)} LoRA targets missing)")
    return clone
