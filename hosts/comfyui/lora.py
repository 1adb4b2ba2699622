"""LoRA on the ComfyUI host: N adapters become ONE patch per weight on a ModelPatcher clone.

Where ComfyUI allows it (fp16 / bf16 / fp32 weights, no hook keyframes, no custom weight formats),
the clone carries the mix in place (`inplace.py`): when ComfyUI loads the clone, the mix is written
into the weights ComfyUI holds, with no backup copy, and a strength change re-weights in place.
Otherwise (said once) the mix goes through ComfyUI's own mechanism (`ModelPatcher.add_patches`) as a
`CombinedLoraPatch`: the adapters' factors concatenated (rank r1 + r2 + ..., weights and alpha / rank
folded into `down`, see `lora_merge.mix_cat`), landing with one fused `addmm_` into the weight
ComfyUI hands it; ComfyUI then keeps its backup and re-patches on a change, as for its own loaders.
With `rank`, the mix is SVD-compressed to that rank first (both routes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import comfy.model_management
import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ...lora_merge import LoraFile, LoraPatchError, LowRankPatch, PatchBuilder
from . import inplace

LOGGER = logging.getLogger("lcm_accel.lora")
MODEL_KEY_PREFIX = "diffusion_model."  # ModelPatcher keys are the BaseModel's state-dict names


class CombinedLoraPatch(WeightAdapterBase):
    """One weight's mixed LoRA delta, (up @ down).reshape(shape), as a ComfyUI weight adapter."""

    name = "lcm_accel_combined_lora"

    def __init__(self, key: str, patch: LowRankPatch):
        if patch.coef is not None:
            raise LoraPatchError(
                f"{key}: a DoRA LoRA is applied in place only; this model cannot be patched in "
                "place (see the log), so DoRA cannot be used on it"
            )
        self.loaded_keys = {key}
        self.patch = patch
        self.weights = [patch.up, patch.down]

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        """weight + strength * delta, in place (ComfyUI passes its float working copy of the weight)."""
        if self.patch.terms or self.patch.dense is not None:  # per-adapter terms / LyCORIS: one layer's delta
            delta = self.patch.delta().to(weight.device, intermediate_dtype).reshape(weight.shape)
            weight += function((float(strength) * delta).type(weight.dtype))
            return weight
        up = comfy.model_management.cast_to_device(self.patch.up, weight.device, intermediate_dtype)
        down = comfy.model_management.cast_to_device(self.patch.down, weight.device, intermediate_dtype)
        if weight.numel() != up.shape[0] * down.shape[1]:
            raise LoraPatchError(
                f"{key}: the LoRA mix patches {tuple(self.patch.shape)}, the weight is {tuple(weight.shape)}"
            )
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
    same checks as the in-place patcher (`inplace.plan_adapters`). Touches no weight."""
    plan, _, weights = inplace.plan_adapters(model, adapters)
    builder = PatchBuilder(rank)
    patches = {}
    for target in plan:
        key = MODEL_KEY_PREFIX + target.param_name
        patch = builder.build(target.param_name, target.param, [(part, weights[i]) for i, part in target.parts])
        patches[key] = CombinedLoraPatch(key, patch)
    return patches


def add_loras(model, adapters: Sequence[tuple[LoraFile, float]], rank: int | None = None):
    """A clone of the ModelPatcher `model` with the adapters added. In place when ComfyUI allows it
    (`inplace.py`: written into the weights ComfyUI holds when it loads the clone), else as one combined
    ComfyUI patch per weight (`add_patches`; said once). A bad LoRA raises before the clone exists: the
    input MODEL is never changed."""
    if rank is not None and rank < 1:
        raise LoraPatchError(f"rank must be a positive integer or None, got {rank!r}")
    spec = inplace.plan_inplace(model, adapters, rank)
    problem = inplace.inplace_problem(model, spec)
    if problem is None and not _has_fallback_patches(model):
        return inplace.add_inplace(model, spec)
    _say_fallback_once(problem or "an earlier LCM Accel LoRA node on this model already used ComfyUI's patches")
    patches = combined_patches(model, adapters, rank)
    clone = model.clone()
    added = clone.add_patches(patches, 1.0)
    if len(added) != len(patches):
        missing = sorted(set(patches) - set(added))
        raise LoraPatchError(f"ComfyUI's model has no weight {missing[0]!r} ({len(missing)} LoRA targets missing)")
    return clone


def _has_fallback_patches(model) -> bool:
    return any(isinstance(p[1], CombinedLoraPatch) for patches in model.patches.values() for p in patches)


_fallback_said = False


def _say_fallback_once(problem: str) -> None:
    global _fallback_said
    if not _fallback_said:
        _fallback_said = True
        LOGGER.warning(
            "LCM Accel: LoRA applied through ComfyUI's own patching (backup copy, re-patch on a strength "
            "change), not in place: %s",
            problem,
        )
