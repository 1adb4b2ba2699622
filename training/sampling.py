"""A guided DDIM sampler (eta = 0) in the timestep view, for data-free latents and benchmarks.

Timesteps are the LCM skipping-step grid of `steps` points (`lcm_scheduler.lcm_timesteps` with
original_inference_steps = steps), descending; the last step returns the x0 prediction.
"""

from __future__ import annotations

import torch

from ..lcm_scheduler.boundary import predict_x0_and_eps
from ..lcm_scheduler.schedule import lcm_timesteps
from .guidance import ModelFn, cfg_combine


@torch.no_grad()
def ddim_sample(
    model: ModelFn,
    noise: torch.Tensor,
    cond: dict,
    uncond: dict | None,
    w: float,
    alphas_cumprod: torch.Tensor,
    steps: int,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Sample from `noise` (at t = T-1) with `steps` DDIM steps and guidance `w` (uncond unused at w = 1)."""
    acp = alphas_cumprod.to(noise.device)
    timesteps = lcm_timesteps(steps, original_inference_steps=steps, num_train_timesteps=len(acp)).to(noise.device)
    x = noise
    s_in = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    x0 = x
    for i, t in enumerate(timesteps):
        out = model(x, t * s_in, cond)
        if w != 1:
            if uncond is None:
                raise ValueError("guided sampling (w != 1) needs the unconditional input")
            out = cfg_combine(out, model(x, t * s_in, uncond), w)
        x0, eps = predict_x0_and_eps(out, x, acp[t], prediction_type)
        if i + 1 < len(timesteps):
            a_next = acp[timesteps[i + 1]]
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x0
