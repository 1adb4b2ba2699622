"""Mix N LoRAs with weights into ONE low-rank patch per target weight.

"cat": the factors are concatenated, rank r1 + r2 + ...; adapter i's scale alpha_i / r_i and its
weight lambda_i are folded into its down (A) factor, exactly as peft's
``add_weighted_adapter(combination_type="cat")`` does, so the patch is
delta = up_cat @ down_cat = sum_i lambda_i (alpha_i / r_i) up_i @ down_i, with no approximation.
"svd": the same sum re-compressed to rank k (the truncated SVD, the best rank-k approximation in
Frobenius norm), computed from the factors through two thin QRs so the full delta is never built;
the relative error ||delta - delta_k||_F / ||delta||_F is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .formats import LoraFactors


@dataclass
class LowRankPatch:
    """delta W = (up @ down + dense()).reshape(shape); up (out, R), down (R, in * kh * kw).
    With ``coef`` the patch is affine, W' = coef * W + delta (DoRA), inverted by (W' - delta) / coef.
    With ``terms`` the low-rank part is kept per adapter, unweighted, so that a re-weight computes each
    adapter's product once for both the old and the new weights.

    ``dense`` (optional) materialises, for one layer at a time, the (out, in * kh * kw) fp32 sum of
    the adapters that are not low-rank (LoHa, LoKr, full diff); it recomputes the same bits on
    every call, so a restore can subtract exactly what the apply added."""

    up: torch.Tensor
    down: torch.Tensor
    shape: tuple[int, ...]
    relative_error: float = 0.0
    dense: Callable[[], torch.Tensor] | None = None
    coef: torch.Tensor | None = None  # DoRA: W' = coef * W + delta; fp32 (out, 1) or (1, in * kh * kw)
    terms: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per adapter (up_i, down_i): file dtype, unscaled
    term_weights: tuple[float, ...] = ()  # weight_i * alpha_i / r_i: delta += sum_i term_weights[i] * up_i @ down_i

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """The full fp32 delta (tests and references only)."""
        d = self.up.float() @ self.down.float()
        for (up, down), weight in zip(self.terms or [], self.term_weights):
            d = d + weight * (up.float() @ down.float())
        if self.dense is not None:
            d = d + self.dense().float().reshape(d.shape)
        return d.reshape(self.shape)


def compress_dense(patch: LowRankPatch, rank: int) -> LowRankPatch:
    """Best rank-`rank` approximation of a patch with a dense part: the layer's whole delta is
    materialised (one layer) and truncated by SVD; the relative Frobenius error is reported."""
    full = patch.delta().reshape(patch.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(full, full_matrices=False)
    k = min(rank, int(s.numel()))
    total = float(s.square().sum())
    rel = (float(s[k:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    dtype = patch.up.dtype
    return LowRankPatch((u[:, :k] * s[:k]).to(dtype), vh[:k].to(dtype), patch.shape, rel)


def _flat_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    rest = 1
    for dim in shape[1:]:
        rest *= dim
    return shape[0], rest


def mix_cat(parts: list[tuple[LoraFactors, float]], dtype: torch.dtype = torch.float32) -> LowRankPatch:
    """Concatenate the factors of several LoRAs of one weight, weights and scales folded into down."""
    if not parts:
        raise ValueError("mix_cat needs at least one (factors, weight) pair.")
    shape = parts[0][0].delta_shape
    flat = _flat_shape(shape)
    for factors, _ in parts:
        if _flat_shape(factors.delta_shape) != flat:
            raise ValueError(
                f"LoRA module '{factors.key}' patches a weight of shape {factors.delta_shape}, another adapter "
                f"patches the same weight with shape {shape}."
            )
    total = sum(factors.rank for factors, _ in parts)
    first = parts[0][0].down
    up = torch.empty((flat[0], total), dtype=dtype, device=first.device)
    down = torch.empty((total, flat[1]), dtype=dtype, device=first.device)
    start = 0
    for factors, weight in parts:  # cast into the result, then scale there in `dtype`
        end = start + factors.rank
        down[start:end].copy_(factors.down.flatten(1)).mul_(weight * factors.scale)
        up[:, start:end].copy_(factors.up.flatten(1))
        start = end
    return LowRankPatch(up=up, down=down, shape=shape)


def compress_svd(patch: LowRankPatch, rank: int) -> LowRankPatch:
    """Best rank-`rank` approximation of a low-rank patch (truncated SVD), with its relative error.

    up @ down = Qu Ru (Qd Rd)^T = Qu (Ru Rd^T) Qd^T, so the SVD of the small R x R core gives the
    SVD of the whole delta. The singular values go into `up` (as peft does: B = U S, A = Vh)."""
    if rank < 1:
        raise ValueError(f"SVD rank must be >= 1, got {rank}.")
    up, down = patch.up.double(), patch.down.double()
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    k = min(rank, int(s.numel()))
    total = float(s.square().sum())
    dropped = float(s[k:].square().sum())
    rel = (dropped / total) ** 0.5 if total > 0 else 0.0
    new_up = (q_up @ u[:, :k]) * s[:k]
    new_down = vh[:k] @ q_down.T
    dtype = patch.up.dtype
    return LowRankPatch(up=new_up.to(dtype), down=new_down.to(dtype), shape=patch.shape, relative_error=rel)


def mix(parts: list[tuple[LoraFactors, float]], rank: int | None = None) -> LowRankPatch:
    """One patch for one weight: exact concatenation, or SVD-compressed to `rank` if given and smaller."""
    patch = mix_cat(parts)
    if rank is not None and rank < patch.rank:
        patch = compress_svd(patch, rank)
    return patch
