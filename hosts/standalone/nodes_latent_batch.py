"""Latent batch nodes (ComfyUI's RepeatLatentBatch, LatentFromBatch).

Both keep `batch_index` (the noise positions KSampler draws for each latent) and the noise mask
in step with the samples, so a latent picked out of a batch is denoised with the noise it had there.
"""

from __future__ import annotations

import math


class RepeatLatentBatch:
    """The batch repeated `amount` times (noise masks and batch indices too)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"
    CATEGORY = "latent/batch"

    def repeat(self, samples: dict, amount: int):
        out = dict(samples)
        tensor = samples["samples"]
        out["samples"] = tensor.repeat((amount,) + (1,) * (tensor.ndim - 1))
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:  # a single mask already applies to any batch
            out["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
        if "batch_index" in out:
            indices = list(out["batch_index"])
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + k * offset for k in range(1, amount) for i in indices]
        return (out,)


class LatentFromBatch:
    """`length` latents from position `batch_index` (both clamped to the batch)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "batch_index": ("INT", {"default": 0, "min": 0, "max": 63}),
                "length": ("INT", {"default": 1, "min": 1, "max": 64}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"
    CATEGORY = "latent/batch"

    def frombatch(self, samples: dict, batch_index: int, length: int):
        out = dict(samples)
        tensor = samples["samples"]
        start = min(tensor.shape[0] - 1, batch_index)
        stop = start + min(tensor.shape[0] - start, length)
        out["samples"] = tensor[start:stop].clone()
        mask = samples.get("noise_mask")
        if mask is not None:
            if mask.shape[0] > 1:
                if mask.shape[0] < tensor.shape[0]:  # masks cycle over the batch
                    mask = mask.repeat(math.ceil(tensor.shape[0] / mask.shape[0]), 1, 1, 1)[: tensor.shape[0]]
                mask = mask[start:stop]
            out["noise_mask"] = mask.clone()
        if "batch_index" in samples:
            out["batch_index"] = list(samples["batch_index"])[start:stop]
        else:
            out["batch_index"] = list(range(start, stop))
        return (out,)
