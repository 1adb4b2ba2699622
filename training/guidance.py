"""Classifier-free guidance as a training target (guidance distillation, arXiv 2312.06899).

Convention used across `training/`: guided = out_u + w * (out_c - out_u) (w = 1: the conditional
model, no guidance; w is what diffusers' pipelines call `guidance_scale`). diffusers' LCD example
scripts write the same estimate as out_c + w' * (out_c - out_u), i.e. w' = w - 1.
In guidance distillation the student (base + LoRA) learns, in ONE forward pass with the
conditional input, the teacher's two-pass guided output at a fixed w.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..lcm_scheduler.boundary import per_sample
from ..lcm_scheduler.schedule import add_noise

# model(x_t, t (int64, per sample), cond kwargs) -> the raw UNet output (eps / v / x0)
ModelFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


def cfg_combine(cond_out: torch.Tensor, uncond_out: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """uncond + w * (cond - uncond), with w a scalar or a per-sample (batch,) tensor."""
    w = torch.as_tensor(w, dtype=cond_out.dtype, device=cond_out.device)
    w = per_sample(w, cond_out.ndim) if w.ndim == 1 else w
    return uncond_out + w * (cond_out - uncond_out)


@torch.no_grad()
def teacher_cfg_output(
    teacher: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: dict, w: float | torch.Tensor
) -> torch.Tensor:
    """The teacher's guided output: two passes (one if w == 1 everywhere)."""
    cond_out = teacher(x, t, cond)
    if bool((torch.as_tensor(w) == 1).all()):
        return cond_out
    return cfg_combine(cond_out, teacher(x, t, uncond), w)


def guidance_distillation_loss(
    student: ModelFn,
    teacher: ModelFn,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cond: dict,
    uncond: dict,
    w: float | torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean squared error, noisy input): student(x_t, t, cond) against the teacher's CFG output at x_t."""
    x_t = add_noise(latents, noise, t, alphas_cumprod)
    target = teacher_cfg_output(teacher, x_t, t, cond, uncond, w)
    prediction = student(x_t, t, cond)
    return torch.mean((prediction.float() - target.float()) ** 2), x_t
