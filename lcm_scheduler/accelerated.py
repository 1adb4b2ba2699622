"""One entry point for the samplers of the accelerator families (`families.Family.sampler`), in the
sigma view (ComfyUI SAMPLER signature): LCM multistep, TCD, DDIM and Euler on the trailing grid."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .deterministic import sample_ddim, sample_euler_trailing
from .families import SAMPLER_KINDS
from .sampling import NoiseSampler, sample_lcm, sample_tcd
from .sigmas import default_train_sigmas, timestep_from_sigma


def pure_noise_start(
    x: torch.Tensor, sigmas: torch.Tensor, table: torch.Tensor, starts: tuple[int, ...]
) -> torch.Tensor:
    """`x` rescaled from noise * sigma to noise * sqrt(1 + sigma^2) when the run starts at one of
    `starts` below T - 1 (see `sample_accelerated`); otherwise `x` itself."""
    start = int(timestep_from_sigma(sigmas[0], table))
    if start in starts and start < len(table) - 1:
        return x * (1 + sigmas[0] ** 2).sqrt() / sigmas[0]
    return x


def sample_accelerated(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    kind: str,
    gamma: float = 0.0,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    train_sigmas: torch.Tensor | None = None,
    pure_noise_starts: tuple[int, ...] = (),
) -> torch.Tensor:
    """Run the sampler `kind` ("lcm", "tcd" with `gamma`, "ddim", "euler") on `sigmas`; the noise
    arguments matter only to the stochastic two.

    `pure_noise_starts`: timesteps below T - 1 at which the family's authors start from pure noise
    (DMD2's 1-step UNet at 399): a run starting there is rescaled from ComfyUI's noise * sigma to the
    unit-variance VP noise they feed, noise * sqrt(1 + sigma^2)."""
    table = (default_train_sigmas() if train_sigmas is None else train_sigmas).to(sigmas.device)
    x = pure_noise_start(x, sigmas, table, pure_noise_starts)
    common = dict(extra_args=extra_args, callback=callback, disable=disable, train_sigmas=table)
    if kind == "lcm":
        return sample_lcm(model, x, sigmas, generator=generator, noise_sampler=noise_sampler, **common)
    if kind == "tcd":
        return sample_tcd(model, x, sigmas, gamma=gamma, generator=generator, noise_sampler=noise_sampler, **common)
    if kind == "ddim":
        return sample_ddim(model, x, sigmas, **common)
    if kind == "euler":
        return sample_euler_trailing(model, x, sigmas, **common)
    raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {kind!r}")
