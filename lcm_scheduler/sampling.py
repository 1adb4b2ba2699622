"""LCM and TCD multistep samplers, k-diffusion style: one short function per sampler.

Two views of the same arithmetic:
- timestep view (`sample_lcm_vp`, `sample_tcd_vp`): `model(x_vp, t, **extra_args)` returns eps / v / x0
  as a diffusers UNet does; the loop is diffusers' `LCMScheduler` / `TCDScheduler` step for step.
- sigma view (`sample_lcm`, `sample_tcd`): ComfyUI's custom-sampler signature; `model(x_ve, sigma * s_in,
  **extra_args)` returns the plain x0 prediction; the consistency boundary condition is applied here,
  using the training timestep of each sigma (looked up in `train_sigmas`).
With the same generator both views draw the same noise in the same order as diffusers (one
`randn` of the latent's shape per non-final step), so a seed reproduces diffusers' images.

Noise: `noise_sampler(sigma, sigma_next)` if given, else `torch.randn` with `generator` (drawn on the
generator's device, then moved, as diffusers' `randn_tensor`), else the global RNG. Giving both
`noise_sampler` and `generator` is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .boundary import check_prediction_type, consistency_output, predict_x0_and_eps
from .plan import PlannedStep, plan_lcm, plan_tcd
from .sigmas import default_train_sigmas, sigmas_from_alphas_cumprod

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def draw_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `like`, drawn as diffusers' `randn_tensor` draws it."""
    device = like.device if generator is None else generator.device
    if generator is not None and device.type != "cpu" and device != like.device:
        raise ValueError(
            f"`generator` is on {device} but the latent is on {like.device}: use a CPU or {like.device} generator."
        )
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def make_noise_sampler(
    like: torch.Tensor, generator: torch.Generator | None = None, noise_sampler: NoiseSampler | None = None
) -> NoiseSampler:
    """The per-step noise source (see the module docstring for which one wins)."""
    if noise_sampler is not None and generator is not None:
        raise ValueError("Pass either `noise_sampler` or `generator`, not both: the sampler would ignore one.")
    if noise_sampler is not None:
        return noise_sampler
    return lambda sigma, sigma_next: draw_noise(like, generator)


def continuing_generator(like: torch.Tensor, seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` and advanced past one draw of `like`'s shape: per-step noise
    drawn from it continues where the initial noise (one randn of the whole latent from the same
    seed, ComfyUI's `prepare_noise`) stopped, the order diffusers' LCM pipelines draw in."""
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return generator


def step_range(count: int, disable: bool | None) -> range:
    """range(count), with a tqdm progress bar unless `disable` (tqdm is imported only when shown)."""
    if disable:
        return range(count)
    from tqdm.auto import trange

    return trange(count, disable=disable)


@torch.no_grad()
def sample_lcm_vp(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    x0_postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """LCM multistep sampling from VP latent `x` at timesteps[0] (txt2img: plain noise; img2img:
    `add_noise(image_latent, noise, timesteps[0])`). Returns the final `denoised` latent."""
    check_prediction_type(prediction_type)
    extra_args = {} if extra_args is None else extra_args
    acp = alphas_cumprod.to(x.device)
    sigmas = sigmas_from_alphas_cumprod(acp)
    noise = make_noise_sampler(x, generator, noise_sampler)
    s_in = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    for i in step_range(len(timesteps), disable):
        t = timesteps[i]
        x0, _ = predict_x0_and_eps(model(x, t * s_in, **extra_args), x, acp[t], prediction_type)
        if x0_postprocess is not None:
            x0 = x0_postprocess(x0)
        denoised = consistency_output(x0, x, t, timestep_scaling, sigma_data)
        if callback is not None:
            callback({"x": x, "i": i, "timestep": t, "sigma": sigmas[t], "sigma_hat": sigmas[t], "denoised": denoised})
        if i == len(timesteps) - 1:
            return denoised
        t_next = timesteps[i + 1]
        x = acp[t_next].sqrt() * denoised + (1 - acp[t_next]).sqrt() * noise(sigmas[t], sigmas[t_next])
    return x


@torch.no_grad()
def sample_lcm(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    train_sigmas: torch.Tensor | None = None,
    x0_postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """LCM multistep sampling in the sigma view (ComfyUI SAMPLER signature). `x` is the VE latent
    at sigmas[0]; `train_sigmas` is the model's sigma table (default: Stable Diffusion's). The steps
    are `plan.plan_lcm`'s."""
    table = default_train_sigmas() if train_sigmas is None else train_sigmas
    plan = plan_lcm(sigmas, table, timestep_scaling, sigma_data)
    return run_plan(model, x, sigmas, plan, extra_args, callback, disable, noise_sampler, generator, x0_postprocess)


def run_plan(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    plan: list[PlannedStep],
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    x0_postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The sigma-view loop of an LCM / TCD plan: x0 = model(x, sigma), then the planned update."""
    extra_args = {} if extra_args is None else extra_args
    noise = make_noise_sampler(x, generator, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in step_range(len(plan), disable):
        step, sigma = plan[i], sigmas[i]
        x0 = model(x, sigma * s_in, **extra_args)
        if x0_postprocess is not None:
            x0 = x0_postprocess(x0)
        x_next = step.x0_coef * x0 + step.x_coef * x
        if callback is not None:
            denoised = x0 if step.preview_is_x0 else x_next
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if step.noise_coef:
            x_next = x_next + step.noise_coef * noise(
                sigmas.new_tensor(step.noise_from), sigmas.new_tensor(step.noise_to)
            )
        x = x_next
    return x


def check_gamma(gamma: float) -> None:
    """Refuse a TCD gamma outside [0, 1] (0 is plain LCM multistep)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"`gamma` (diffusers' `eta`) must be in [0, 1], got {gamma!r}.")


@torch.no_grad()
def sample_tcd_vp(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    gamma: float = 0.3,
    prediction_type: str = "epsilon",
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """TCD sampling (Zheng et al. 2024), diffusers' `TCDScheduler` step for step: jump to x0, re-noise
    deterministically to s = floor((1 - gamma) * t_next), then add fresh noise from s up to t_next.
    gamma = 0 is deterministic; the last step targets timestep 0, as diffusers does."""
    check_gamma(gamma)
    check_prediction_type(prediction_type)
    extra_args = {} if extra_args is None else extra_args
    acp = alphas_cumprod.to(x.device)
    sigmas = sigmas_from_alphas_cumprod(acp)
    noise = make_noise_sampler(x, generator, noise_sampler)
    s_in = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    for i in step_range(len(timesteps), disable):
        t = timesteps[i]
        last = i == len(timesteps) - 1
        t_next = torch.tensor(0) if last else timesteps[i + 1]
        s = torch.floor((1 - gamma) * t_next).long()
        x0, eps = predict_x0_and_eps(model(x, t * s_in, **extra_args), x, acp[t], prediction_type)
        if callback is not None:
            callback({"x": x, "i": i, "timestep": t, "sigma": sigmas[t], "sigma_hat": sigmas[t], "denoised": x0})
        x = acp[s].sqrt() * x0 + (1 - acp[s]).sqrt() * eps
        if gamma > 0 and not last:
            ratio = acp[t_next] / acp[s]
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * noise(sigmas[s], sigmas[t_next])
    return x


@torch.no_grad()
def sample_tcd(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    gamma: float = 0.3,
    train_sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """TCD sampling in the sigma view (ComfyUI SAMPLER signature), equal to `sample_tcd_vp`. Sigmas
    should come from the model's table (`tcd_sigmas`): s is found through timesteps. As in
    diffusers, the step into sigma 0 ends at training timestep 0, not at the clean latent. The steps
    are `plan.plan_tcd`'s."""
    check_gamma(gamma)
    table = default_train_sigmas() if train_sigmas is None else train_sigmas
    plan = plan_tcd(sigmas, table, gamma)
    return run_plan(model, x, sigmas, plan, extra_args, callback, disable, noise_sampler, generator)


def sample_lcm_or_tcd(
    model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, gamma: float = 0.0, **kwargs
) -> torch.Tensor:
    """The LCMSampler node's sampler in either host: `sample_lcm` at gamma 0, `sample_tcd` with that
    gamma above 0 (keyword arguments go to the sampler)."""
    check_gamma(gamma)
    if gamma > 0:
        return sample_tcd(model, x, sigmas, gamma=float(gamma), **kwargs)
    return sample_lcm(model, x, sigmas, **kwargs)
