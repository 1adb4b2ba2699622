"""k-diffusion samplers by ComfyUI's names. Host-free: each takes a denoiser D(x, sigma) -> x0,
the starting x (already noised for sigmas[0]), the sigma list, and a `step` callback called
once per step (progress / interruption). Ancestral noise comes from `noise_sampler()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seeded_noise_sampler(x: torch.Tensor, seed: int | None) -> Callable[[], torch.Tensor]:
    """Fresh normal noise like x from a CPU generator seeded with `seed`, moved to x's device
    (ComfyUI's default_noise_sampler, except that ComfyUI draws on x's device: drawing on the CPU
    gives a seed the same image on every device, as the initial noise does)."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return lambda: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, generator=generator).to(x.device)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dsigma = (x - D) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """(sigma_down, sigma_up): deterministic target and fresh-noise amount of an ancestral step."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sample_euler(model: Denoiser, x, sigmas, step, noise_sampler=None):
    """Euler's method on the probability-flow ODE."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i].expand(x.shape[0]))
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        step(i)
    return x


def sample_euler_ancestral(model: Denoiser, x, sigmas, step, noise_sampler):
    """Euler down to sigma_down, then fresh noise up to sigma_{i+1}."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i].expand(x.shape[0]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i]) + noise_sampler() * sigma_up
        step(i)
    return x


def sample_dpmpp_2m(model: Denoiser, x, sigmas, step, noise_sampler=None):
    """DPM-Solver++(2M): second-order multistep in log-sigma time."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i].expand(x.shape[0]))
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        ratio = sigmas[i + 1] / sigmas[i]
        if old_denoised is None or sigmas[i + 1] == 0:
            x = ratio * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ratio * x - (-h).expm1() * corrected
        old_denoised = denoised
        step(i)
    return x


def sample_lcm(model: Denoiser, x, sigmas, step, noise_sampler):
    """LCM multistep: jump to the consistency prediction, re-noise to the next sigma."""
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i].expand(x.shape[0]))
        if sigmas[i + 1] > 0:
            x = x + noise_sampler() * sigmas[i + 1]
        step(i)
    return x


SAMPLERS = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "lcm": sample_lcm,
    "ddim": sample_euler,  # ComfyUI runs "ddim" as euler (its inpainting noise option aside)
}
