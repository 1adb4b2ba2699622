"""The noise schedule (betas, alphas_cumprod) and the LCM / TCD timestep schedules.

Everything here is the timestep ("VP") view of diffusion: a latent at integer timestep t is
x_t = sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * eps with acp = alphas_cumprod.
The timestep schedules reproduce diffusers' `LCMScheduler.set_timesteps` and
`TCDScheduler.set_timesteps` step for step (same float arithmetic), so the same arguments
give the same timesteps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

BETA_SCHEDULES = ("scaled_linear", "linear")


def make_betas(
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-step noise variances, as diffusers builds them (float32; ComfyUI's tables use float64).

    "scaled_linear" (Stable Diffusion 1.x/2.x/XL) is linear in sqrt(beta); "linear" is linear in beta.
    """
    _check_positive_int(num_train_timesteps, "num_train_timesteps")
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=dtype) ** 2
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=dtype)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")


def make_alphas_cumprod(
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """alphas_cumprod[t] = prod_{s<=t} (1 - beta_s), float32, length `num_train_timesteps`."""
    betas = make_betas(beta_schedule, beta_start, beta_end, num_train_timesteps)
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(
    original: torch.Tensor, noise: torch.Tensor, timestep: int | torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion to `timestep`: sqrt(acp) * original + sqrt(1 - acp) * noise.

    This is how img2img starts: the encoded image is noised to the first timestep of the schedule.
    """
    index = torch.as_tensor(timestep, dtype=torch.long, device=original.device).reshape(-1)
    acp = alphas_cumprod.to(device=original.device, dtype=original.dtype)[index]
    acp = acp.reshape(-1, *([1] * (original.ndim - 1)))
    return acp**0.5 * original + (1 - acp) ** 0.5 * noise


def lcm_timesteps(
    num_inference_steps: int | None,
    original_inference_steps: int = 50,
    strength: float = 1.0,
    num_train_timesteps: int = 1000,
    timesteps: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The LCM skipping-step schedule (int64, descending), equal to `LCMScheduler.set_timesteps`.

    The distillation grid is every (num_train_timesteps // original_inference_steps)-th training
    step, ending at T-1. img2img `strength` keeps only the lowest-noise `int(original * strength)`
    grid points; `num_inference_steps` of them are then taken at evenly spaced indices.
    Custom `timesteps` (instead of `num_inference_steps`) are validated, then `strength` keeps the
    last `int(len * strength)` of them.
    """
    _check_original_and_strength(original_inference_steps, strength, num_train_timesteps)
    k = num_train_timesteps // original_inference_steps
    grid = [i * k - 1 for i in range(1, int(original_inference_steps * strength) + 1)]
    if _custom(num_inference_steps, timesteps):
        return _custom_schedule(timesteps, grid, original_inference_steps, strength, num_train_timesteps)
    _check_step_count(num_inference_steps, original_inference_steps, strength, len(grid), num_train_timesteps)
    return _evenly_spaced(grid, num_inference_steps)


def tcd_timesteps(
    num_inference_steps: int | None,
    original_inference_steps: int = 50,
    strength: float = 1.0,
    num_train_timesteps: int = 1000,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    full_train_grid: bool = False,
) -> torch.Tensor:
    """The TCD schedule (int64, descending), equal to `TCDScheduler.set_timesteps`.

    With `full_train_grid=False` this is the LCM schedule: what `TCDScheduler` does when
    `original_inference_steps` comes from its config. `TCDScheduler.set_timesteps` given an explicit
    `original_inference_steps` instead draws from *every* training step (0 .. T*strength - 1),
    using `original_inference_steps` only as a bound on `num_inference_steps`; pass
    `full_train_grid=True` to get that schedule.
    """
    if not full_train_grid:
        return lcm_timesteps(num_inference_steps, original_inference_steps, strength, num_train_timesteps, timesteps)
    _check_original_and_strength(original_inference_steps, strength, num_train_timesteps)
    grid = list(range(0, int(num_train_timesteps * strength)))
    if _custom(num_inference_steps, timesteps):
        return _custom_schedule(timesteps, grid, original_inference_steps, strength, num_train_timesteps)
    _check_step_count(num_inference_steps, original_inference_steps, strength, len(grid), num_train_timesteps)
    return _evenly_spaced(grid, num_inference_steps)


def _evenly_spaced(grid: list[int], num_inference_steps: int) -> torch.Tensor:
    """`num_inference_steps` grid points, from the noisiest, at floor(i * len / n) (numpy's linspace)."""
    descending = grid[::-1]
    spacing = len(descending) / num_inference_steps
    return torch.tensor([descending[math.floor(i * spacing)] for i in range(num_inference_steps)], dtype=torch.long)


def _custom(num_inference_steps: int | None, timesteps: object) -> bool:
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError(
            "Pass exactly one of `num_inference_steps` or `timesteps` (custom timesteps), "
            f"got num_inference_steps={num_inference_steps!r} and timesteps={timesteps!r}."
        )
    return timesteps is not None


def _custom_schedule(
    timesteps: Sequence[int] | torch.Tensor,
    grid: list[int],
    original_inference_steps: int,
    strength: float,
    num_train_timesteps: int,
) -> torch.Tensor:
    """Validate custom timesteps like diffusers (descending, below T) and also refuse negatives."""
    values = _as_int_list(timesteps)
    if not values:
        raise ValueError("`timesteps` is empty: give at least one timestep.")
    for previous, current in zip(values, values[1:]):
        if current >= previous:
            raise ValueError(f"`timesteps` must be strictly descending, got {current} after {previous}: {values}.")
    if values[0] >= num_train_timesteps:
        raise ValueError(f"`timesteps` must be below num_train_timesteps={num_train_timesteps}, got {values[0]}.")
    if values[-1] < 0:
        raise ValueError(f"`timesteps` must be >= 0, got {values[-1]}.")
    off_grid = [t for t in values[1:] if t not in set(grid)]
    if off_grid:
        warnings.warn(
            f"`timesteps` {off_grid} are not on the distillation grid (original_inference_steps="
            f"{original_inference_steps}); results may be poor.",
            stacklevel=3,
        )
    kept = min(int(len(values) * strength), len(values))
    if kept == 0:
        raise ValueError(
            f"strength={strength} keeps none of the {len(values)} custom `timesteps` "
            f"(int(len * strength) == 0); raise strength or give more timesteps."
        )
    return torch.tensor(values[len(values) - kept :], dtype=torch.long)


def _as_int_list(timesteps: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(timesteps, torch.Tensor):
        if timesteps.is_floating_point() or timesteps.ndim != 1:
            raise ValueError(
                f"`timesteps` must be a 1-D integer tensor, got dtype {timesteps.dtype}, shape "
                f"{tuple(timesteps.shape)}."
            )
        return [int(t) for t in timesteps.tolist()]
    values = list(timesteps)
    for t in values:
        if isinstance(t, bool) or not float(t).is_integer():
            raise ValueError(f"`timesteps` must be integers, got {t!r} in {values}.")
    return [int(t) for t in values]


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_original_and_strength(original_inference_steps: int, strength: float, num_train_timesteps: int) -> None:
    _check_positive_int(num_train_timesteps, "num_train_timesteps")
    _check_positive_int(original_inference_steps, "original_inference_steps")
    if original_inference_steps > num_train_timesteps:
        raise ValueError(
            f"`original_inference_steps`={original_inference_steps} cannot exceed "
            f"num_train_timesteps={num_train_timesteps}."
        )
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"`strength` must be in (0, 1], got {strength!r}.")


def _check_step_count(
    num_inference_steps: int, original_inference_steps: int, strength: float, grid_size: int, num_train_timesteps: int
) -> None:
    _check_positive_int(num_inference_steps, "num_inference_steps")
    if num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"`num_inference_steps`={num_inference_steps} cannot exceed num_train_timesteps={num_train_timesteps}."
        )
    if num_inference_steps > original_inference_steps:
        raise ValueError(
            f"`num_inference_steps`={num_inference_steps} cannot exceed "
            f"`original_inference_steps`={original_inference_steps}: the schedule is a subset of that grid."
        )
    if grid_size < num_inference_steps:
        raise ValueError(
            f"`num_inference_steps`={num_inference_steps} is more than the {grid_size} grid points that "
            f"`strength`={strength} leaves of original_inference_steps={original_inference_steps}; "
            f"lower num_inference_steps or raise strength."
        )
