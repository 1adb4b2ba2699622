"""Schedulers: the sigma list a sampler walks, by ComfyUI's names and with ComfyUI's semantics.

Every scheduler is `scheduler(table, steps) -> sigmas`: a float32 CPU tensor, decreasing, normally
`steps + 1` long and ending with 0 (`ddim_uniform` and `beta` can give a different count, as in
ComfyUI). `table` is a `DiscreteSigmas` / `DistilledSigmas`.

- normal:       timesteps evenly spaced from sigma_max's to sigma_min's (both included), each
                mapped to a sigma by log-linear interpolation of the table; then 0.
- sgm_uniform:  the same with steps + 1 points and the last one dropped (SGM / SDXL-Turbo style).
- simple:       every (N / steps)-th table sigma counted from the top.
- ddim_uniform: every (N // steps)-th table sigma counted from index 1, reversed, then 0.
- karras:       Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, rho = 7.
- exponential:  sigmas evenly spaced in log sigma from sigma_max to sigma_min.
- beta:         timesteps at the quantiles 1 - i/steps of a Beta(0.6, 0.6) distribution (Lee et al.
                2024, "Beta sampling is all you need"), rounded to table indices, repeats dropped.
- linear_quadratic, kl_optimal: ComfyUI's two further schedulers (Mochi's linear-then-quadratic
                ramp times sigma_max; the KL-optimal arctan schedule of Sabour et al. 2024).
"""

from __future__ import annotations

import math

import torch

from .sigma_table import DiscreteSigmas

# KSampler discards the penultimate sigma of a (steps + 1)-step schedule for these samplers
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: n sigmas evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas evenly spaced in log sigma from sigma_max down to sigma_min, then 0."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas evenly spaced in arctan(sigma) from sigma_max down to sigma_min, then 0."""
    w = torch.arange(n, dtype=torch.float32) / (n - 1)
    out = torch.zeros(n + 1)
    out[:-1] = (w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan()
    return out


def normal_scheduler(table: DiscreteSigmas, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from sigma_max's to sigma_min's (sgm: steps + 1 points, last dropped).
    When the table's smallest sigma is ~0 it is kept as the final sigma instead of appending 0."""
    start = table.timestep(table.sigma_max)
    end = table.timestep(table.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(table.sigma(end)), 0.0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(table.sigma(t)) for t in timesteps]
    return torch.tensor(sigmas + ([0.0] if append_zero else []), dtype=torch.float32)


def sgm_uniform_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    return normal_scheduler(table, steps, sgm=True)


def simple_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    """Every (N / steps)-th table sigma from the top (index N-1 - int(k N / steps)), then 0."""
    stride = len(table.sigmas) / steps
    sigmas = [float(table.sigmas[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def ddim_uniform_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    """Table sigmas at indices 1, 1 + s, 1 + 2s, ... (s = N // steps) from the top down, then 0.
    (When N is not a multiple of steps this gives more than `steps` steps, as ComfyUI does; a
    zero-SNR-free table whose index-1 sigma is ~0 gets one step more and no appended 0.)"""
    n = len(table.sigmas)
    if math.isclose(float(table.sigmas[1]), 0.0, abs_tol=1e-5):
        steps += 1
        tail = []
    else:
        tail = [0.0]
    stride = max(n // steps, 1)
    picked = [float(table.sigmas[i]) for i in range(1, n, stride)]
    return torch.tensor(picked[::-1] + tail, dtype=torch.float32)


# -- Beta(alpha, beta) quantiles without scipy ------------------------------------------------


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction
    (evaluated with the modified Lentz method; the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) keeps
    x on the side where the fraction converges fast)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        # even term, then odd term of the continued fraction
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(log_front) * fraction / a


def beta_quantile(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): I_x(a, b) = q solved by bisection to float64 resolution."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def beta_scheduler(table: DiscreteSigmas, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Table sigmas at timesteps round(Q(1 - k/steps) * (N-1)), k = 0..steps-1, with Q the
    Beta(alpha, beta) quantile function (halves rounded up); consecutive repeats dropped; then 0."""
    last = len(table.sigmas) - 1
    sigmas, previous = [], None
    for k in range(steps):
        # round half up: the median (k = steps/2) lands exactly between two timesteps for an odd
        # `last`, and ComfyUI (scipy's ppf, a hair above 1/2 there) takes the upper one
        t = math.floor(beta_quantile(1.0 - k * (1.0 / steps), alpha, beta) * last + 0.5)
        if t != previous:
            sigmas.append(float(table.sigmas[int(t)]))
        previous = t
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def linear_quadratic_scheduler(
    table: DiscreteSigmas, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Mochi's schedule: 1 - sigma rises linearly to `threshold_noise` over the first half of the
    steps, then quadratically to 1; times the table's sigma_max."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        rises = [k * threshold_noise / linear_steps for k in range(linear_steps)]
        gap = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        qa = gap / (linear_steps * quadratic_steps**2)
        qb = threshold_noise / linear_steps - 2 * gap / quadratic_steps**2
        qc = qa * linear_steps**2
        rises += [qa * k**2 + qb * k + qc for k in range(linear_steps, steps)]
        fractions = [1.0 - r for r in rises + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * table.sigma_max.cpu()


def karras_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    return karras_sigmas(steps, float(table.sigma_min), float(table.sigma_max))


def exponential_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    return exponential_sigmas(steps, float(table.sigma_min), float(table.sigma_max))


def kl_optimal_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    return kl_optimal_sigmas(steps, float(table.sigma_min), float(table.sigma_max))


# name -> scheduler(table, steps), in ComfyUI's order
SCHEDULERS = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}
SCHEDULER_NAMES = list(SCHEDULERS)


def calculate_sigmas(table: DiscreteSigmas, scheduler: str, steps: int) -> torch.Tensor:
    """The sigma list for `steps` steps with the named scheduler (ComfyUI's calculate_sigmas)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r} is not available; choose from {', '.join(SCHEDULERS)}")
    return SCHEDULERS[scheduler](table, steps)


def ksampler_sigmas(
    table: DiscreteSigmas, scheduler: str, steps: int, denoise: float | None = 1.0, sampler: str | None = None
) -> torch.Tensor:
    """KSampler's sigmas (ComfyUI's KSampler.set_steps): `denoise` < 1 keeps the last `steps` steps
    of an int(steps / denoise)-step schedule (img2img); denoise <= 0 gives no sigmas. For the
    samplers in DISCARD_PENULTIMATE_SIGMA_SAMPLERS the schedule is computed for one step more
    and its penultimate sigma dropped (pass `sampler` to get that)."""

    def schedule(n: int) -> torch.Tensor:
        if sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            sigmas = calculate_sigmas(table, scheduler, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return calculate_sigmas(table, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return schedule(steps)
    if denoise <= 0.0:
        return torch.zeros([0])
    return schedule(int(steps / denoise))[-(steps + 1) :]
