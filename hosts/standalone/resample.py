"""Resizing IMAGE and LATENT tensors as ComfyUI's `comfy.utils.common_upscale` does.

Methods: torch's `interpolate` modes (nearest-exact, bilinear, area, bicubic; align_corners off,
no antialiasing), Pillow's Lanczos on 8-bit pixels (so the result is quantised to 1/255, as in
ComfyUI), and bislerp: bilinear placement with spherical interpolation of each pixel's channel
vector, which keeps latent vectors' norms where a plain lerp would shrink them. `crop="center"`
first cuts the input to the target's aspect ratio.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .names import CROP_METHODS

INTERPOLATE_MODES = ("nearest-exact", "bilinear", "area", "bicubic")
PARALLEL = 1e-5  # |cos| this close to 1: treat two vectors as parallel (ComfyUI's threshold)


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, C, H, W) cut symmetrically to the aspect ratio width:height (offsets rounded)."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    left = top = 0
    if old_aspect > new_aspect:
        left = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        top = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., top : old_h - top, left : old_w - left]


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, C, H, W) pixels in 0..1 resized with Pillow's Lanczos filter through 8-bit images."""
    from PIL import Image

    out = []
    for image in samples:
        array = np.clip(255.0 * image.movedim(0, -1).detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(array).resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(resized).astype(np.float32) / 255.0).reshape(height, width, -1))
    return torch.stack(out).movedim(-1, 1).to(samples.device, samples.dtype)


def _source_positions(old: int, new: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` output positions along an axis of length `old`: the two source indices
    and the fraction between them. They come from bilinearly resampled index ramps (half-pixel
    centres, clamped at the edges, as torch's bilinear mode), truncated to integers as ComfyUI
    does; the upper ramp stops at the last index."""
    lower_ramp = torch.arange(old, dtype=torch.float32, device=device)
    upper_ramp = (lower_ramp + 1).clamp(max=old - 1)

    def resampled(ramp: torch.Tensor) -> torch.Tensor:
        return F.interpolate(ramp.reshape(1, 1, 1, -1), size=(1, new), mode="bilinear").reshape(-1)

    lower = resampled(lower_ramp)
    return lower.long(), resampled(upper_ramp).long(), lower - lower.floor()


def slerp_vectors(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Row-wise spherical interpolation of (N, C) vectors at fractions t (N, 1): the direction
    slerped, the length lerped; (anti)parallel rows fall back to a (parallel) or the lerp."""
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    unit_a = torch.where(norm_a == 0, torch.zeros_like(a), a / norm_a)
    unit_b = torch.where(norm_b == 0, torch.zeros_like(b), b / norm_b)
    cos = (unit_a * unit_b).sum(1)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    w = t.squeeze(1)
    out = (torch.sin((1.0 - w) * angle) / sin).unsqueeze(1) * unit_a + (torch.sin(w * angle) / sin).unsqueeze(
        1
    ) * unit_b
    out = out * (norm_a * (1.0 - t) + norm_b * t)
    lerp = a * (1.0 - t) + b * t
    out = torch.where((cos > 1 - PARALLEL).unsqueeze(1), a, out)
    return torch.where((cos < PARALLEL - 1).unsqueeze(1), lerp, out)


def _bislerp_axis(samples: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """One separable pass of bislerp along `dim` (2: height, 3: width) of (B, C, H, W)."""
    lower, upper, frac = _source_positions(samples.shape[dim], size, samples.device)
    a, b = samples.index_select(dim, lower), samples.index_select(dim, upper)
    shape = [1, 1, 1, 1]
    shape[dim] = size
    t = frac.reshape(shape).expand(a.shape[0], 1, *a.shape[2:])
    channels = samples.shape[1]
    flat = [v.movedim(1, -1).reshape(-1, channels) for v in (a, b)]
    out = slerp_vectors(flat[0], flat[1], t.movedim(1, -1).reshape(-1, 1))
    return out.reshape(a.shape[0], *a.shape[2:], channels).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, C, H, W) resized to (height, width) by bislerp: the width pass, then the height pass."""
    dtype = samples.dtype
    out = _bislerp_axis(samples.float(), 3, width)
    return _bislerp_axis(out, 2, height).to(dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """(B, C, H, W) resized to (height, width) with `method`, after the optional centre crop."""
    if crop not in CROP_METHODS:
        raise ValueError(f"crop {crop!r} unknown; choose from {', '.join(CROP_METHODS)}")
    if samples.ndim != 4:
        raise ValueError(f"expected a (batch, channels, height, width) tensor, got shape {tuple(samples.shape)}")
    source = center_crop_to_aspect(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        return bislerp(source, width, height)
    if method == "lanczos":
        return lanczos(source, width, height)
    if method in INTERPOLATE_MODES:
        return F.interpolate(source, size=(height, width), mode=method)
    raise ValueError(f"upscale_method {method!r} unknown; choose from {', '.join(INTERPOLATE_MODES)}, bislerp, lanczos")
