"""Conditioning list nodes (ComfyUI's ConditioningCombine, ConditioningZeroOut,
ConditioningSetTimestepRange).

A CONDITIONING is a list of [tensor, options] entries. The sampler averages the denoised
predictions of all entries (weighted by `strength`) that are active at the current sigma; an
entry with `start_percent` / `end_percent` is active only over that part of the schedule
(`denoiser.GuidedDenoiser`).
"""

from __future__ import annotations


def _entries(node: str, name: str, conditioning) -> list:
    if not isinstance(conditioning, list) or not all(
        isinstance(e, (list, tuple)) and len(e) == 2 for e in conditioning
    ):
        raise TypeError(f"{node}: {name} is not a CONDITIONING (a list of [tensor, options] entries)")
    return conditioning


class ConditioningCombine:
    """Both conditionings' entries in one list: the sampler averages their predictions."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"
    CATEGORY = "conditioning"

    def combine(self, conditioning_1, conditioning_2):
        first = _entries("ConditioningCombine", "conditioning_1", conditioning_1)
        return (first + _entries("ConditioningCombine", "conditioning_2", conditioning_2),)


class ConditioningZeroOut:
    """The same entries with zero embeddings (and zero pooled output): an "empty" prompt that is
    exactly zero, as SDXL-Turbo-style workflows use for the negative."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"
    CATEGORY = "advanced/conditioning"

    def zero_out(self, conditioning):
        import torch

        out = []
        for tensor, options in _entries("ConditioningZeroOut", "conditioning", conditioning):
            options = dict(options)
            for key in ("pooled_output", "conditioning_lyrics"):
                if options.get(key) is not None:
                    options[key] = torch.zeros_like(options[key])
            out.append([torch.zeros_like(tensor), options])
        return (out,)


class ConditioningSetTimestepRange:
    """Limit the entries to a part of the schedule: from `start` to `end` (0 = first step, 1 = last)."""

    @classmethod
    def INPUT_TYPES(cls):
        bound = {"min": 0.0, "max": 1.0, "step": 0.001}
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "start": ("FLOAT", {"default": 0.0, **bound}),
                "end": ("FLOAT", {"default": 1.0, **bound}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set_range"
    CATEGORY = "advanced/conditioning"

    def set_range(self, conditioning, start: float, end: float):
        entries = _entries("ConditioningSetTimestepRange", "conditioning", conditioning)
        for name, value in (("start", start), ("end", end)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"ConditioningSetTimestepRange: {name} {value} is outside 0..1")
        range_ = {"start_percent": float(start), "end_percent": float(end)}
        return ([[tensor, {**options, **range_}] for tensor, options in entries],)
