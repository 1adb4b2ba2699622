"""Latent consistency distillation (LCD, Luo et al. 2023; the LCM-LoRA tech report).

One training step, for a clean latent z and a grid index n drawn uniformly:
    t = grid[n] (k-1, 2k-1, ..., T-1 with k = T / num_ddim_steps),  s = max(t - k, 0)
    x_t   = sqrt(acp[t]) z + sqrt(1 - acp[t]) eps
    pred  = f_student(x_t, t)                       f = c_skip(t) x + c_out(t) x0(x, t)
    x_s   = DDIM step of the guided teacher from x_t to s (x0 and eps both guided, `cfg_combine`)
    tgt   = f_target(x_s, s)  (no gradient; the student itself or an EMA of its LoRA)
    loss  = huber(pred, tgt) = mean(sqrt((pred - tgt)^2 + c^2) - c)   or   mean((pred - tgt)^2)
The grid, the boundary condition and x0 prediction come from `lcm_scheduler` (one implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lcm_scheduler.boundary import check_prediction_type, consistency_output, per_sample, predict_x0_and_eps
from ..lcm_scheduler.schedule import add_noise, lcm_timesteps
from .distributed import SINGLE, Shard
from .guidance import ModelFn, cfg_combine

LOSSES = ("huber", "l2")


@dataclass(frozen=True)
class LCDSettings:
    """What the LCD objective needs besides the models. `w` fixed overrides the [w_min, w_max] range."""

    num_ddim_steps: int = 50
    w_min: float = 5.0
    w_max: float = 15.0
    w: float | None = None
    loss: str = "huber"
    huber_c: float = 0.001
    prediction_type: str = "epsilon"
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.w is None and not 0 < self.w_min <= self.w_max:
            raise ValueError(f"need 0 < w_min <= w_max, got w_min={self.w_min}, w_max={self.w_max}")
        if self.w is not None and self.w <= 0:
            raise ValueError(f"the guidance scale w must be > 0, got {self.w}")
        if self.huber_c <= 0:
            raise ValueError(f"huber_c must be > 0, got {self.huber_c}")
        check_prediction_type(self.prediction_type)


@dataclass(frozen=True)
class SolverGrid:
    """The skipping-step DDIM solver's timesteps (ascending) and their skip k."""

    timesteps: torch.Tensor
    skip: int

    def end_timesteps(self, start: torch.Tensor) -> torch.Tensor:
        """s = t - k, clamped at 0 (the step below the lowest grid point lands on timestep 0)."""
        return (start - self.skip).clamp(min=0)


def ddim_solver_grid(num_train_timesteps: int = 1000, num_ddim_steps: int = 50) -> SolverGrid:
    """The LCM skipping-step grid (`lcm_scheduler.lcm_timesteps` with all of its points), ascending."""
    grid = lcm_timesteps(
        num_ddim_steps, original_inference_steps=num_ddim_steps, num_train_timesteps=num_train_timesteps
    )
    return SolverGrid(grid.flip(0), num_train_timesteps // num_ddim_steps)


@dataclass
class LCDDraw:
    """The random inputs of one LCD step (drawn separately so a step can be recomputed by hand)."""

    index: torch.Tensor  # (batch,) int64 index into the grid
    noise: torch.Tensor  # like the latents
    w: torch.Tensor  # (batch,) guidance scales


def draw_lcd_inputs(
    latents: torch.Tensor,
    grid: SolverGrid,
    settings: LCDSettings,
    generator: torch.Generator | None = None,
    shard: Shard = SINGLE,
) -> LCDDraw:
    """Grid index, noise and w for a batch, from `generator` (CPU), moved to the latents' device.
    `shard`: the draws are made for the global batch and this process keeps its rows."""
    batch, rest = latents.shape[0], tuple(latents.shape[1:])
    index = shard.rows(lambda n: torch.randint(0, len(grid.timesteps), (n,), generator=generator), batch)
    noise = shard.rows(lambda n: torch.randn((n, *rest), generator=generator, dtype=torch.float32), batch)
    if settings.w is not None:
        w = torch.full((batch,), float(settings.w))
    else:
        w = settings.w_min + (settings.w_max - settings.w_min) * shard.rows(
            lambda n: torch.rand((n,), generator=generator), batch
        )
    return LCDDraw(index.to(latents.device), noise.to(latents.device, latents.dtype), w.to(latents.device))


def consistency_function(
    model: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: dict, alphas_cumprod: torch.Tensor, settings: LCDSettings
) -> torch.Tensor:
    """f(x, t) = c_skip(t) x + c_out(t) x0(model(x, t)): the LCM's denoised output."""
    x0, _ = predict_x0_and_eps(model(x, t, cond), x, per_sample(alphas_cumprod[t], x.ndim), settings.prediction_type)
    return consistency_output(x0, x, t, settings.timestep_scaling, settings.sigma_data)


@torch.no_grad()
def guided_ddim_step(
    teacher: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    cond: dict,
    uncond: dict,
    w: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """One DDIM (eta = 0) step of the guided teacher from x_t to timestep s."""
    acp_t = per_sample(alphas_cumprod[t], x.ndim)
    x0_c, eps_c = predict_x0_and_eps(teacher(x, t, cond), x, acp_t, prediction_type)
    if bool((w == 1).all()):
        x0, eps = x0_c, eps_c
    else:
        x0_u, eps_u = predict_x0_and_eps(teacher(x, t, uncond), x, acp_t, prediction_type)
        x0, eps = cfg_combine(x0_c, x0_u, w), cfg_combine(eps_c, eps_u, w)
    acp_s = per_sample(alphas_cumprod[s], x.ndim)
    return acp_s.sqrt() * x0 + (1 - acp_s).sqrt() * eps


def distance(prediction: torch.Tensor, target: torch.Tensor, settings: LCDSettings) -> torch.Tensor:
    """Pseudo-Huber (c = settings.huber_c) or squared error, averaged over everything, in float32."""
    diff = prediction.float() - target.float()
    if settings.loss == "huber":
        return torch.mean(torch.sqrt(diff**2 + settings.huber_c**2) - settings.huber_c)
    return torch.mean(diff**2)


@dataclass
class LCDOutput:
    loss: torch.Tensor
    student_denoised: torch.Tensor  # f_student(x_t, t): the one-step x0 the reward is computed on
    x_t: torch.Tensor
    x_s: torch.Tensor


def lcd_loss(
    student: ModelFn,
    teacher: ModelFn,
    target: ModelFn,
    latents: torch.Tensor,
    cond: dict,
    uncond: dict,
    alphas_cumprod: torch.Tensor,
    grid: SolverGrid,
    draw: LCDDraw,
    settings: LCDSettings,
) -> LCDOutput:
    """The LCD loss of one batch for the given random inputs (see the module docstring)."""
    acp = alphas_cumprod.to(latents.device)
    t = grid.timesteps.to(latents.device)[draw.index]
    s = grid.end_timesteps(t)
    x_t = add_noise(latents, draw.noise, t, acp)
    # teacher and target first: an EMA target swaps weights in place, which must not happen
    # between the student's forward and its backward
    x_s = guided_ddim_step(teacher, x_t, t, s, cond, uncond, draw.w, acp, settings.prediction_type)
    with torch.no_grad():
        tgt = consistency_function(target, x_s, s, cond, acp, settings)
    prediction = consistency_function(student, x_t, t, cond, acp, settings)
    return LCDOutput(distance(prediction, tgt, settings), prediction, x_t, x_s)
