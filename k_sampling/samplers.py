"""Samplers by ComfyUI's names, in the k-diffusion style (Karras et al. 2022's VE view).

Every sampler has the same signature:

    sample_<name>(model, x, sigmas, step=None, noise=None, **options) -> x_final

* `model(x, sigma_batch) -> denoised`: the denoiser D(x; sigma), x0 predicted from x at noise
  level sigma (x = x0 + sigma * eps), `sigma_batch` a 1-D tensor of x.shape[0] sigmas.
* `x`: the start, already noised for sigmas[0] (noise * sigmas[0], or noise * sqrt(1 + sigma^2)
  for a full denoise, plus the latent, as KSampler does).
* `sigmas`: 1-D, decreasing, usually ending with 0 (see schedulers.py).
* `step(i)`: called once per step after step i (progress bar, interruption); None for none.
* `noise`: a `NoiseSource(seed)` (see noise.py) for the samplers that draw fresh noise; the
  deterministic ones ignore it. A plain function noise(sigma, sigma_next) -> Tensor works too.
* `options`: keyword options with ComfyUI's meanings and defaults (eta, s_noise, r,
  solver_type, order), see each sampler.

The ODE is dx/dsigma = (x - D(x; sigma)) / sigma. The DPM-Solver family works in the
half-log-SNR lambda = -log sigma, with h = lambda_next - lambda the step in lambda.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .noise import brownian_noise, gaussian_noise

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[int], None]


def _no_step(_: int) -> None:
    pass


def _at(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A scalar sigma as the per-batch-item sigma vector the denoiser takes."""
    return sigma * x.new_ones([x.shape[0]])


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """Split a step sigma_from -> sigma_to into a deterministic part down to sigma_down and fresh
    noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_to^2, with
    sigma_up = min(sigma_to, eta * sigma_to * sqrt(1 - sigma_to^2 / sigma_from^2))
    (eta = 1: the DDPM posterior's noise; eta = 0: no noise, sigma_down = sigma_to)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


# -- first and second order ODE solvers (Karras et al. 2022) ------------------------------------


def sample_euler(model: Denoiser, x, sigmas, step=None, noise=None):
    """Euler's method (Karras et al. 2022, Alg. 2 without churn):
    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * (x_i - D(x_i; sigma_i)) / sigma_i.
    ComfyUI's "ddim" is this sampler too (DDIM with eta 0 is Euler in the VE view)."""
    step = step or _no_step
    for i in range(len(sigmas) - 1):
        denoised = model(x, _at(x, sigmas[i]))
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        step(i)
    return x


def sample_heun(model: Denoiser, x, sigmas, step=None, noise=None):
    """Heun's method (Karras et al. 2022, Alg. 1): an Euler predictor to sigma_{i+1}, then the
    trapezoidal average of the slopes at both ends; the last step to sigma = 0 is plain Euler."""
    step = step or _no_step
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = to_d(x, sigma, model(x, _at(x, sigma)))
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            d_next = to_d(x_euler, sigma_next, model(x_euler, _at(x, sigma_next)))
            x = x + (d + d_next) / 2 * dt
        step(i)
    return x


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The geometric mean sqrt(a b), computed as exp of the midpoint of the logs."""
    return a.log().lerp(b.log(), 0.5).exp()


def sample_dpm_2(model: Denoiser, x, sigmas, step=None, noise=None):
    """DPM-Solver-2 in the VE form of Karras et al. 2022: an Euler half step to the geometric
    midpoint sigma_mid = sqrt(sigma_i sigma_{i+1}), then the full step with the slope there;
    Euler for the last step to 0. (KSampler gives it one step more and drops the penultimate
    sigma, see `ksampler_sigmas`.)"""
    step = step or _no_step
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = to_d(x, sigma, model(x, _at(x, sigma)))
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_next)
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, _at(x, sigma_mid)))
            x = x + d_mid * (sigma_next - sigma)
        step(i)
    return x


# -- ancestral samplers -------------------------------------------------------------------------


def sample_euler_ancestral(model: Denoiser, x, sigmas, step=None, noise=None, eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral Euler: an Euler step down to sigma_down, then fresh Gaussian noise of std
    s_noise * sigma_up (see `ancestral_step`); x = D when sigma_down = 0."""
    step = step or _no_step
    draw = gaussian_noise(noise, x, "euler_ancestral")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
            x = x + draw(sigma, sigma_next) * s_noise * sigma_up
        step(i)
    return x


def sample_dpm_2_ancestral(model: Denoiser, x, sigmas, step=None, noise=None, eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral DPM-Solver-2: the DPM-2 step (midpoint slope at sqrt(sigma_i sigma_down)) down to
    sigma_down, then noise of std s_noise * sigma_up; Euler when sigma_down = 0."""
    step = step or _no_step
    draw = gaussian_noise(noise, x, "dpm_2_ancestral")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, _at(x, sigma_mid)))
            x = x + d_mid * (sigma_down - sigma)
            x = x + draw(sigma, sigma_next) * s_noise * sigma_up
        step(i)
    return x


# -- linear multistep ---------------------------------------------------------------------------


def _poly_mul(p: list[float], q: list[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for a, ca in enumerate(p):
        for b, cb in enumerate(q):
            out[a + b] += ca * cb
    return out


def lms_coefficient(nodes: list[float], j: int, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of the Lagrange basis polynomial of node j: prod_{k != j}
    (tau - t_k) / (t_j - t_k), integrated exactly (float64)."""
    poly = [1.0]
    for k, t_k in enumerate(nodes):
        if k != j:
            scale = nodes[j] - t_k
            poly = _poly_mul(poly, [-t_k / scale, 1.0 / scale])
    return sum(c * (hi ** (n + 1) - lo ** (n + 1)) / (n + 1) for n, c in enumerate(poly))


def sample_lms(model: Denoiser, x, sigmas, step=None, noise=None, order: int = 4):
    """Linear multistep (Adams-Bashforth in sigma, as Karras/Crowson's k-diffusion): the slope
    d(sigma) is interpolated by the Lagrange polynomial through the last min(i+1, order) slopes and
    integrated exactly over [sigma_i, sigma_{i+1}]; the last step to 0 returns D."""
    step = step or _no_step
    nodes_all = [float(s) for s in sigmas.detach().cpu().float()]
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, _at(x, sigmas[i]))
        slopes.append(to_d(x, sigmas[i], denoised))
        slopes = slopes[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            current = min(i + 1, order)
            nodes = [nodes_all[i - j] for j in range(current)]
            for j in range(current):
                x = x + lms_coefficient(nodes, j, nodes_all[i], nodes_all[i + 1]) * slopes[-1 - j]
        step(i)
    return x


# -- DPM-Solver++ family (Lu et al. 2022) ---------------------------------------------------------


def sample_dpmpp_2s_ancestral(
    model: Denoiser, x, sigmas, step=None, noise=None, eta: float = 1.0, s_noise: float = 1.0
):
    """DPM-Solver++(2S), single-step second order, ancestral. With lambda = -log sigma and
    h = lambda(sigma_down) - lambda(sigma_i): an intermediate point at lambda + h/2,
    u = (sigma_s / sigma_i) x - (e^{-h/2} - 1) D(x), then x <- (sigma_down / sigma_i) x
    - (e^{-h} - 1) D(u; sigma_s); then noise of std s_noise * sigma_up while sigma_{i+1} > 0.
    Euler when sigma_down = 0."""
    step = step or _no_step
    draw = gaussian_noise(noise, x, "dpmpp_2s_ancestral")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            lam, lam_down = -sigma.log(), -sigma_down.log()
            h = lam_down - lam
            sigma_s = (-(lam + h / 2)).exp()
            u = (sigma_s / sigma) * x - (-h / 2).expm1() * denoised
            denoised_s = model(u, _at(x, sigma_s))
            x = (sigma_down / sigma) * x - (-h).expm1() * denoised_s
        if sigma_next > 0:
            x = x + draw(sigma, sigma_next) * s_noise * sigma_up
        step(i)
    return x


def sample_dpmpp_sde(
    model: Denoiser, x, sigmas, step=None, noise=None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5
):
    """DPM-Solver++ SDE, single-step second order with Brownian-tree noise. Per step (h in lambda):
    1. an ancestral DPM-Solver++(1) step from sigma_i to sigma_s = sigma_i e^{-r h} (deterministic
       part to its sigma_down, noise of its sigma_up from the Brownian path over [sigma_s, sigma_i]);
    2. the denoised estimates combined, D' = (1 - 1/(2r)) D(x) + 1/(2r) D(x_s; sigma_s), and the
       ancestral DPM-Solver++(1) step from sigma_i to sigma_{i+1} with D' (noise over [sigma_{i+1},
       sigma_i]). The last step to 0 returns D. eta = 0 gives the deterministic DPM-Solver++(2S)."""
    if len(sigmas) <= 1:
        return x
    step = step or _no_step
    draw = brownian_noise(noise, x, sigmas, "dpmpp_sde") if eta > 0 and s_noise > 0 else None
    with_noise = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        if sigma_next == 0:
            x = denoised
        else:
            lam = -sigma.log()
            h = -sigma_next.log() - lam
            sigma_s = (-(lam + r * h)).exp()
            weight = 1 / (2 * r)

            down, up = ancestral_step(sigma, sigma_s, eta)
            x_s = (down / sigma) * x - (sigma.log() - down.log()).neg().expm1() * denoised
            if with_noise:
                x_s = x_s + draw(sigma, sigma_s) * s_noise * up
            denoised_s = model(x_s, _at(x, sigma_s))

            down, up = ancestral_step(sigma, sigma_next, eta)
            combined = (1 - weight) * denoised + weight * denoised_s
            x = (down / sigma) * x - (sigma.log() - down.log()).neg().expm1() * combined
            if with_noise:
                x = x + draw(sigma, sigma_next) * s_noise * up
        step(i)
    return x


def sample_dpmpp_2m(model: Denoiser, x, sigmas, step=None, noise=None):
    """DPM-Solver++(2M), second-order multistep (Lu et al. 2022, Alg. 2):
    x <- (sigma_{i+1}/sigma_i) x - (e^{-h} - 1) D', with D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},
    r = h_{i-1} / h_i; first order (D' = D_i) on the first step and the last step to 0."""
    step = step or _no_step
    previous = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        h = sigma.log() - sigma_next.log()
        if previous is None or sigma_next == 0:
            estimate = denoised
        else:
            r = (sigmas[i - 1].log() - sigma.log()) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (sigma_next / sigma) * x - (-h).expm1() * estimate
        previous = denoised
        step(i)
    return x


def sample_dpmpp_2m_sde(
    model: Denoiser,
    x,
    sigmas,
    step=None,
    noise=None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, the SDE variant of 2M) with Brownian-tree noise:
    x <- (sigma_{i+1}/sigma_i) e^{-eta h} x + (1 - e^{-(1+eta) h}) D_i
         + second-order term in (D_i - D_{i-1}) / r, r = h_{i-1}/h,
           midpoint: (1/2)(1 - e^{-(1+eta)h});  heun: 1 - (1 - e^{-(1+eta)h}) / ((1+eta)h)
         + s_noise * sigma_{i+1} sqrt(1 - e^{-2 eta h}) * noise(sigma_i, sigma_{i+1}).
    First order on the first step; the last step to 0 returns D."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', not {solver_type!r}")
    step = step or _no_step
    draw = brownian_noise(noise, x, sigmas, "dpmpp_2m_sde") if eta > 0 and s_noise > 0 else None
    previous, h, h_previous = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            h_eta = h * (eta + 1)
            one_minus = -(-h_eta).expm1()  # 1 - e^{-(1+eta) h}
            x = (sigma_next / sigma) * (-h * eta).exp() * x + one_minus * denoised
            if previous is not None:
                slope = (denoised - previous) * (h / h_previous)
                if solver_type == "midpoint":
                    x = x + 0.5 * one_minus * slope
                else:
                    x = x + (1 - one_minus / h_eta) * slope
            if eta > 0 and s_noise > 0:
                x = x + draw(sigma, sigma_next) * sigma_next * (-(-2 * h * eta).expm1()).sqrt() * s_noise
        previous, h_previous = denoised, h
        step(i)
    return x


def sample_dpmpp_2m_sde_heun(
    model: Denoiser, x, sigmas, step=None, noise=None, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "heun"
):
    """DPM-Solver++(2M) SDE with the Heun-type second-order term (see `sample_dpmpp_2m_sde`)."""
    return sample_dpmpp_2m_sde(model, x, sigmas, step, noise, eta=eta, s_noise=s_noise, solver_type=solver_type)


def sample_dpmpp_3m_sde(model: Denoiser, x, sigmas, step=None, noise=None, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(3M) SDE with Brownian-tree noise. With g = (1+eta) h, phi2 = (e^{-g} - 1)/g + 1,
    phi3 = phi2/g - 1/2 and the divided differences of the last three D's in lambda
    (r0 = h_{i-1}/h, r1 = h_{i-2}/h; d1_0 = (D_i - D_{i-1})/r0, d1_1 = (D_{i-1} - D_{i-2})/r1,
    d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1), d2 = (d1_0 - d1_1)/(r0 + r1)):
    x <- (sigma_{i+1}/sigma_i) e^{-eta h} x + (1 - e^{-g}) D_i + phi2 d1 - phi3 d2
         + s_noise * sigma_{i+1} sqrt(1 - e^{-2 eta h}) * noise(sigma_i, sigma_{i+1}).
    Lower order while fewer D's exist (2M SDE with the Heun term, then first order); the last
    step to 0 returns D."""
    if len(sigmas) <= 1:
        return x
    step = step or _no_step
    draw = brownian_noise(noise, x, sigmas, "dpmpp_3m_sde") if eta > 0 and s_noise > 0 else None
    d_1 = d_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            g = h * (eta + 1)
            x = (sigma_next / sigma) * (-h * eta).exp() * x - (-g).expm1() * denoised
            phi2 = (-g).expm1() / g + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi3 = phi2 / g - 0.5
                x = x + phi2 * d1 - phi3 * d2
            elif h_1 is not None:
                x = x + phi2 * (denoised - d_1) / (h_1 / h)
            if eta > 0 and s_noise > 0:
                x = x + draw(sigma, sigma_next) * sigma_next * (-(-2 * h * eta).expm1()).sqrt() * s_noise
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        step(i)
    return x


# -- DDPM and LCM --------------------------------------------------------------------------------


def sample_ddpm(model: Denoiser, x, sigmas, step=None, noise=None):
    """Ancestral DDPM (Ho et al. 2020, Alg. 2) between arbitrary sigmas, in the VP view:
    abar = 1/(1 + sigma^2), alpha = abar_i / abar_{i+1}, x_vp = x / sqrt(1 + sigma_i^2),
    eps = (x - D)/sigma_i; mu = (x_vp - (1 - alpha)/sqrt(1 - abar_i) eps) / sqrt(alpha), plus
    sqrt((1 - alpha)(1 - abar_{i+1})/(1 - abar_i)) z (the posterior std) while sigma_{i+1} > 0;
    back to VE: x = mu sqrt(1 + sigma_{i+1}^2)."""
    step = step or _no_step
    draw = gaussian_noise(noise, x, "ddpm")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _at(x, sigma))
        abar, abar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
        alpha = abar / abar_next
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if sigma_next > 0:
            mu = mu + ((1 - alpha) * (1.0 - abar_next) / (1.0 - abar)).sqrt() * draw(sigma, sigma_next)
            x = mu * torch.sqrt(1.0 + sigma_next**2.0)
        else:
            x = mu
        step(i)
    return x


def sample_lcm_kdiffusion(model: Denoiser, x, sigmas, step=None, noise=None):
    """LCM multistep sampling (Luo et al. 2023, Alg. 1): jump to the consistency prediction
    x0 = D(x; sigma_i), then re-noise it to sigma_{i+1}: x = x0 + sigma_{i+1} z."""
    step = step or _no_step
    draw = gaussian_noise(noise, x, "lcm")
    for i in range(len(sigmas) - 1):
        x = model(x, _at(x, sigmas[i]))
        if sigmas[i + 1] > 0:
            x = x + draw(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
        step(i)
    return x


# -- UniPC (Zhao et al. 2023) ---------------------------------------------------------------------

UNI_PC_LAST_SIGMA = 0.001  # UniPC never steps to sigma = 0 (lambda = inf): it stops here


def _uni_pc_update(model, x, history, sigma_t, order, variant, corrector):
    """One UniPC step from the newest history entry to sigma_t, data prediction, order `order`.

    With lambda = -log sigma, h = lambda_t - lambda_0 and the older D's as divided differences
    D1_k = (D_{-k} - D_0) / r_k, r_k = (lambda_{-k} - lambda_0) / h:
      base      x_t' = (sigma_t / sigma_0) x - (e^{-h} - 1) D_0
      predictor x_t  = x_t' - B(h) sum_k rho^p_k D1_k       (UniP; order 2: rho^p = 1/2)
      corrector x_t  = x_t' - B(h) (sum_k rho^c_k D1_k + rho^c_last (D(x_t; sigma_t) - D_0))
    (UniC; order 1: rho^c = 1/2). rho solves R rho = b with R_{m,k} = r_k^(m-1) (r = 1 for the
    newest point) and b_m = m! z phi_{m+1}(z) / B(h), z = -h, where
    phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k are the exponential-integrator functions and
    B(h) = -h (bh1) or e^{-h} - 1 (bh2). Returns (x_t, D(x_t; sigma_t) or None)."""
    sigma_0, d_0 = history[-1]
    lam_0, lam_t = -sigma_0.log(), -sigma_t.log()
    h = lam_t - lam_0
    hh = -h
    h_phi_1 = hh.expm1()
    b_h = hh if variant == "bh1" else h_phi_1

    rks, diffs = [], []
    for k in range(1, order):
        sigma_k, d_k = history[-(k + 1)]
        rk = (-sigma_k.log() - lam_0) / h
        rks.append(rk)
        diffs.append((d_k - d_0) / rk)
    rks.append(torch.ones_like(h))
    rks = torch.stack(rks)

    rows, rhs = [], []
    h_phi_k = h_phi_1 / hh - 1  # z phi_2(z); then z phi_{m+1}(z) = z phi_m(z) / z - 1/m! each round
    factorial = 1
    for m in range(1, order + 1):
        rows.append(rks ** (m - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= m + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = torch.stack(rows), torch.stack(rhs)

    base = (sigma_t / sigma_0) * x - h_phi_1 * d_0
    if diffs:
        rhos_p = (
            torch.tensor([0.5], dtype=b.dtype, device=b.device)
            if order == 2
            else torch.linalg.solve(R[:-1, :-1], b[:-1])
        )
        x_t = base - b_h * sum(rho * d for rho, d in zip(rhos_p, diffs))
    else:
        x_t = base
    if not corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], dtype=b.dtype, device=b.device) if order == 1 else torch.linalg.solve(R, b)
    d_t = model(x_t, _at(x, sigma_t))
    correction = sum((rho * d for rho, d in zip(rhos_c[:-1], diffs)), torch.zeros_like(x))
    x_t = base - b_h * (correction + rhos_c[-1] * (d_t - d_0))
    return x_t, d_t


def _vp_rescale(x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """x taken into the VP view at sigma_from (x / sqrt(1 + sigma_from^2)) and out of it at sigma_to
    (divided by alpha = exp(-log(1 + sigma_to^2) / 2)), in the order of operations UniPC uses."""
    alpha_to = torch.exp(0.5 * torch.log(1 / (sigma_to * sigma_to + 1)))
    return x / torch.sqrt(1.0 + sigma_from**2) / alpha_to


def sample_uni_pc(model: Denoiser, x, sigmas, step=None, noise=None, variant: str = "bh1"):
    """UniPC multistep predictor-corrector (Zhao et al. 2023), data prediction, order up to 3
    (min(3, steps - 1)), lower order on the first steps and the last two, as ComfyUI's "uni_pc"
    runs it: each step's corrector evaluates D at the predicted point and that evaluation is
    reused by the next step's predictor; the final step has no corrector and, when the schedule
    ends at 0, stops at sigma = 0.001 (`UNI_PC_LAST_SIGMA`). variant "bh1": B(h) = h (ComfyUI's
    "uni_pc"), "bh2": B(h) = e^h - 1 ("uni_pc_bh2"). KSampler gives it one step more and drops
    the penultimate sigma, see `ksampler_sigmas`. A single step (two sigmas, e.g. KSampler with
    1 step) is ComfyUI's too: its UniPC then runs order 0, which evaluates D once (the denoised
    preview) but takes no step, and only rescales x from the VP view at sigmas[0] back at the last
    sigma: x * sqrt(1 + sigma_last^2) / sqrt(1 + sigma_0^2), about the start latent itself."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', not {variant!r}")
    step = step or _no_step
    sigmas = sigmas.clone()
    if len(sigmas) > 1 and sigmas[-1] == 0:
        sigmas[-1] = UNI_PC_LAST_SIGMA
    steps = len(sigmas) - 1
    if steps < 1:
        return x
    if steps == 1:  # ComfyUI's order-0 UniPC: one evaluation, no step
        model(x, _at(x, sigmas[0]))
        step(0)
        return _vp_rescale(x, sigmas[0], sigmas[1])
    max_order = max(min(3, steps - 1), 1)
    history = [(sigmas[0], model(x, _at(x, sigmas[0])))]
    for k in range(1, steps + 1):
        order = min(k, max_order, steps + 1 - k)
        last = k == steps
        x, d_t = _uni_pc_update(model, x, history[-max_order:], sigmas[k], order, variant, corrector=not last)
        if not last:
            history = (history + [(sigmas[k], d_t)])[-max_order:]
        step(k - 1)
    return x


def sample_uni_pc_bh2(model: Denoiser, x, sigmas, step=None, noise=None):
    """UniPC with B(h) = e^h - 1 (ComfyUI's "uni_pc_bh2"); see `sample_uni_pc`."""
    return sample_uni_pc(model, x, sigmas, step, noise, variant="bh2")


# name -> sampler, in ComfyUI's order (KSAMPLER_NAMES, then ddim, uni_pc, uni_pc_bh2)
SAMPLERS = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm_kdiffusion,
    "ddim": sample_euler,  # ComfyUI runs "ddim" as euler (only its inpainting noise differs)
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
SAMPLER_NAMES = list(SAMPLERS)

# samplers that draw fresh noise (need a NoiseSource), and those whose noise is a Brownian path
STOCHASTIC_SAMPLERS = frozenset(
    {
        "euler_ancestral",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_heun",
        "dpmpp_3m_sde",
        "ddpm",
        "lcm",
    }
)
BROWNIAN_SAMPLERS = frozenset({"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"})
# for an inpainting mask ComfyUI's "ddim" blends the kept latent with fresh noise from
# torch.manual_seed(seed + 1) (CPU) instead of the initial noise
RANDOM_INPAINT_NOISE_SAMPLERS = frozenset({"ddim"})
