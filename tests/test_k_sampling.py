"""k_sampling: ComfyUI's samplers and schedulers, pure torch.

Always: the sigma tables and schedulers against diffusers and closed forms; the samplers against
diffusers' schedulers on a toy denoiser (Euler, Euler ancestral, Heun, LMS, DPM-Solver++ 2M and its
SDE variant, DPM-Solver SDE with the same Brownian tree, DDPM with the same noise), against the
exact probability-flow ODE solution for Gaussian data, and the Brownian noise's properties.
With COMFYUI_PATH set: every sampler x scheduler pair equals ComfyUI's KSampler sigmas and
comfy.k_diffusion / UniPC samplers on the same toy denoiser, seed and noise (one subprocess).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lcm_accel.k_sampling import (
    BROWNIAN_SAMPLERS,
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULER_NAMES,
    STOCHASTIC_SAMPLERS,
    BrownianTreeNoise,
    DiscreteSigmas,
    DistilledSigmas,
    NoiseSource,
    calculate_sigmas,
    ksampler_sigmas,
)
from lcm_accel.k_sampling.schedulers import beta_quantile

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
DIFFUSERS_KW = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
# the pairs issue 27 names
ISSUE_SAMPLERS = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "uni_pc",
    "ddim",
    "lcm",
]
ISSUE_SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
MU, C = 0.3, 0.7  # toy data: N(MU, C^2) per element
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # numpy 2 vs diffusers' np.array(copy=)
    pytest.mark.filterwarnings("ignore:Should have:UserWarning"),  # torchsde clamping diffusers' queries
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def table():
    return DiscreteSigmas(SD15)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser for data N(MU, C^2): E[x0 | x] = (C^2 x + sigma^2 MU) / (C^2 + sigma^2)."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (C**2 * x + s2 * MU) / (C**2 + s2)


def exact_ode(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    """The probability-flow ODE's solution for that data: x - MU scales with sqrt(C^2 + sigma^2)."""
    return MU + (x_start - MU) * math.sqrt(C**2 + sigma_end**2) / math.sqrt(C**2 + sigma_start**2)


def _diffusers_alphas(scheduler):
    """diffusers' alphabar table recomputed in float64 (as ours / ComfyUI's), then float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()
    return scheduler


def _rel(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max())


# -- sigma tables and schedulers ---------------------------------------------------------------


def test_tables_match_diffusers_and_round_trip(table):
    from diffusers import EulerDiscreteScheduler
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_zsnr

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(table.sigmas, (((1 - abar) / abar) ** 0.5).float())
    assert EulerDiscreteScheduler(**DIFFUSERS_KW).sigmas.shape[0] == 1001
    # zero-terminal-SNR as diffusers rescales the betas
    abar_z = torch.cumprod(1 - diffusers_zsnr(betas), 0)
    expected = ((1 - abar_z) / abar_z) ** 0.5
    zsnr = DiscreteSigmas(SD15, zsnr=True)
    torch.testing.assert_close(zsnr.sigmas[:-1], expected[:-1].float(), rtol=1e-5, atol=1e-6)
    assert float(zsnr.sigmas[-1]) == pytest.approx(((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08) ** 0.5)
    # timestep <-> sigma are inverse on the table, also on LCM's distilled table (training timesteps)
    steps = torch.arange(1000)
    assert torch.equal(table.timestep(table.sigma(steps.float())), steps)
    lcm = DistilledSigmas(SD15)
    lcm_steps = torch.arange(19, 1000, 20)
    assert torch.equal(lcm.timestep(lcm.sigma(lcm_steps.float())), lcm_steps)
    torch.testing.assert_close(lcm.sigmas, table.sigmas[lcm_steps])
    assert float(calculate_sigmas(lcm, "normal", 4)[0]) == pytest.approx(float(table.sigmas[999]))
    assert float(calculate_sigmas(lcm, "normal", 4)[-2]) == pytest.approx(float(table.sigmas[19]))


def test_schedulers_against_diffusers_and_closed_forms(table):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    def euler_sigmas(steps, **kw):
        scheduler = EulerDiscreteScheduler(**DIFFUSERS_KW, **kw)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.float()

    check = lambda ours, ref: torch.testing.assert_close(ours, ref, rtol=2e-5, atol=1e-6)
    check(calculate_sigmas(table, "normal", 10), euler_sigmas(10, timestep_spacing="linspace"))
    check(calculate_sigmas(table, "simple", 4), euler_sigmas(4, timestep_spacing="trailing"))
    check(calculate_sigmas(table, "karras", 6), euler_sigmas(6, timestep_spacing="linspace", use_karras_sigmas=True))
    check(
        calculate_sigmas(table, "exponential", 6),
        euler_sigmas(6, timestep_spacing="linspace", use_exponential_sigmas=True),
    )

    smin, smax = float(table.sigma_min), float(table.sigma_max)
    for n in (1, 5, 12):
        i = torch.arange(n, dtype=torch.float64)
        ramp = i / max(n - 1, 1)
        karras = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
        check(calculate_sigmas(table, "karras", n), torch.cat([karras, karras.new_zeros(1)]).float())
        expo = torch.exp(math.log(smax) + ramp * (math.log(smin) - math.log(smax)))
        check(calculate_sigmas(table, "exponential", n), torch.cat([expo, expo.new_zeros(1)]).float())

    # sgm_uniform: steps + 1 evenly spaced fractional timesteps, last dropped, log-sigma interpolated
    log_sigmas = table.sigmas.double().log()
    for t_frac, sigma in zip(torch.linspace(999, 0, 5)[:-1], calculate_sigmas(table, "sgm_uniform", 4)):
        lo = int(t_frac)
        w = float(t_frac) - lo
        expected = math.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[min(lo + 1, 999)])
        assert float(sigma) == pytest.approx(expected, rel=2e-6)

    # ddim_uniform = diffusers' DDIM "leading" timesteps with SD's steps_offset = 1
    for steps in (4, 10, 25):
        ddim = DDIMScheduler(**DIFFUSERS_KW, steps_offset=1, timestep_spacing="leading")
        ddim.set_timesteps(steps)
        check(calculate_sigmas(table, "ddim_uniform", steps), torch.cat([table.sigmas[ddim.timesteps], torch.zeros(1)]))

    # beta: Beta(0.6, 0.6) quantiles (scipy as the reference when present)
    scipy_stats = pytest.importorskip("scipy.stats")
    for q in (1e-9, 0.01, 0.25, 0.5, 0.77, 0.999999):
        assert beta_quantile(q, 0.6, 0.6) == pytest.approx(float(scipy_stats.beta.ppf(q, 0.6, 0.6)), abs=1e-12)
    for steps in (1, 3, 8, 20, 37, 100):
        ts = [round(float(scipy_stats.beta.ppf(1 - k / steps, 0.6, 0.6)) * 999) for k in range(steps)]
        picked = [t for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]]
        check(calculate_sigmas(table, "beta", steps), torch.cat([table.sigmas[picked], torch.zeros(1)]))

    assert list(SCHEDULER_NAMES[:7]) == [
        "simple",
        "sgm_uniform",
        "karras",
        "exponential",
        "ddim_uniform",
        "beta",
        "normal",
    ]
    with pytest.raises(ValueError, match="not available"):
        calculate_sigmas(table, "nope", 4)


def test_ksampler_sigmas_denoise_and_discarded_penultimate(table):
    full = calculate_sigmas(table, "karras", 10)
    torch.testing.assert_close(ksampler_sigmas(table, "karras", 10, 1.0), full)
    torch.testing.assert_close(ksampler_sigmas(table, "karras", 4, 0.5), calculate_sigmas(table, "karras", 8)[-5:])
    assert ksampler_sigmas(table, "karras", 4, 0.0).numel() == 0
    for name in ("dpm_2", "dpm_2_ancestral", "uni_pc"):
        longer = calculate_sigmas(table, "normal", 7)
        torch.testing.assert_close(
            ksampler_sigmas(table, "normal", 6, 1.0, sampler=name), torch.cat([longer[:-2], longer[-1:]])
        )
    torch.testing.assert_close(
        ksampler_sigmas(table, "normal", 6, 1.0, sampler="euler"), calculate_sigmas(table, "normal", 6)
    )


# -- samplers against diffusers' schedulers ---------------------------------------------------


def _eps_model(x_ve: torch.Tensor, sigma) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return (x_ve - gaussian_denoiser(x_ve, sigma.reshape(1).expand(x_ve.shape[0]))) / sigma


def _start(seed=7, shape=(2, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_euler_heun_lms_match_diffusers_k_schedulers():
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        LMSDiscreteScheduler,
    )

    noise = _start()

    def run_ve(scheduler, steps, generator=None, stop=None):
        scheduler.set_timesteps(steps)
        x = noise * float(scheduler.sigmas[0])
        for t in scheduler.timesteps[:stop]:
            scheduler.scale_model_input(x, t)  # sets the step index
            sigma = scheduler.sigmas[scheduler.step_index]
            extra = {"generator": generator} if generator is not None else {}
            x = scheduler.step(_eps_model(x, sigma), t, x, **extra).prev_sample
        return x

    euler = _diffusers_alphas(EulerDiscreteScheduler(**DIFFUSERS_KW, use_karras_sigmas=True))
    reference = run_ve(euler, 9)
    ours = SAMPLERS["euler"](gaussian_denoiser, noise * float(euler.sigmas[0]), euler.sigmas.float())
    assert _rel(ours, reference) < 1e-5

    # ancestral Euler: diffusers draws one N(0, 1) per step from its generator, as a seeded source does
    ancestral = _diffusers_alphas(EulerAncestralDiscreteScheduler(**DIFFUSERS_KW))
    reference = run_ve(ancestral, 8, generator=torch.Generator().manual_seed(11))
    ours = SAMPLERS["euler_ancestral"](
        gaussian_denoiser, noise * float(ancestral.sigmas[0]), ancestral.sigmas.float(), None, NoiseSource(11)
    )
    assert _rel(ours, reference) < 1e-5

    heun = _diffusers_alphas(HeunDiscreteScheduler(**DIFFUSERS_KW, use_karras_sigmas=True))
    reference = run_ve(heun, 6)
    sigmas = torch.cat([heun.sigmas[:1], heun.sigmas[1::2]]).float()  # diffusers repeats the inner sigmas
    assert len(sigmas) == 7
    ours = SAMPLERS["heun"](gaussian_denoiser, noise * float(sigmas[0]), sigmas)
    assert _rel(ours, reference) < 1e-5

    # LMS: ComfyUI returns D on the final step to 0, diffusers integrates it; compare before it
    lms = _diffusers_alphas(LMSDiscreteScheduler(**DIFFUSERS_KW))
    reference = run_ve(lms, 10, stop=9)
    ours = SAMPLERS["lms"](gaussian_denoiser, noise * float(lms.sigmas[0]), lms.sigmas[:10].float())
    assert _rel(ours, reference) < 1e-5


def test_dpmpp_2m_and_2m_sde_and_ddpm_match_diffusers():
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    noise = _start()

    def run_vp(scheduler, steps, generator=None):
        scheduler.set_timesteps(steps)
        x = noise.clone()
        for k, t in enumerate(scheduler.timesteps):
            sigma = float(scheduler.sigmas[k])
            eps = _eps_model(x * (1 + sigma**2) ** 0.5, sigma)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        return x

    kw = dict(**DIFFUSERS_KW, use_karras_sigmas=True, final_sigmas_type="zero", solver_order=2)
    dpm = _diffusers_alphas(DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++"))
    reference = run_vp(dpm, 8)
    sigmas = dpm.sigmas.float()
    ours = SAMPLERS["dpmpp_2m"](gaussian_denoiser, noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas)
    assert _rel(ours, reference) < 1e-5

    # the SDE variant (eta = 1, midpoint) with Gaussian noise drawn in the same order as diffusers
    sde = _diffusers_alphas(DPMSolverMultistepScheduler(**kw, algorithm_type="sde-dpmsolver++"))
    reference = run_vp(sde, 8, generator=torch.Generator().manual_seed(5))
    sigmas = sde.sigmas.float()
    draws = torch.Generator().manual_seed(5)
    ours = SAMPLERS["dpmpp_2m_sde"](
        gaussian_denoiser,
        noise * (1 + sigmas[0] ** 2) ** 0.5,
        sigmas,
        None,
        lambda s, t: torch.randn(noise.shape, generator=draws),
    )
    assert _rel(ours, reference) < 1e-5

    # DDPM's ancestral posterior steps, noise from the same seeded CPU stream
    ddpm = _diffusers_alphas(DDPMScheduler(**DIFFUSERS_KW, clip_sample=False))
    ddpm.set_timesteps(10)
    table_sigmas = DiscreteSigmas(SD15).sigmas
    sigmas = torch.cat([table_sigmas[ddpm.timesteps], torch.zeros(1)])
    ddpm.sigmas = sigmas  # for run_vp's eps
    generator = torch.Generator().manual_seed(9)
    x = noise.clone()
    for k, t in enumerate(ddpm.timesteps):
        eps = _eps_model(x * (1 + float(sigmas[k]) ** 2) ** 0.5, float(sigmas[k]))
        x = ddpm.step(eps, t, x, generator=generator).prev_sample
    ours = SAMPLERS["ddpm"](gaussian_denoiser, noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas, None, NoiseSource(9))
    assert _rel(ours, x) < 1e-5


def test_dpmpp_sde_matches_diffusers_dpm_solver_sde_with_the_same_brownian_tree():
    from diffusers import DPMSolverSDEScheduler

    noise = _start(shape=(1, 4, 8, 8))
    scheduler = _diffusers_alphas(DPMSolverSDEScheduler(**DIFFUSERS_KW, use_karras_sigmas=True, noise_sampler_seed=123))
    scheduler.set_timesteps(6)
    x = noise * float(scheduler.sigmas[0])
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        sigma = (
            float(scheduler.sigmas[scheduler.step_index])
            if scheduler.state_in_first_order
            else float(scheduler.mid_point_sigma)
        )
        x = scheduler.step(_eps_model(x_in * (1 + sigma**2) ** 0.5, sigma), t, x).prev_sample
    sigmas = torch.cat([scheduler.sigmas[:1], scheduler.sigmas[1::2]]).float()
    ours = SAMPLERS["dpmpp_sde"](gaussian_denoiser, noise * float(sigmas[0]), sigmas, None, NoiseSource(123))
    assert _rel(ours, x) < 1e-5, _rel(ours, x)  # the same torchsde path, queried at the same sigmas


# -- against the exact ODE solution ---------------------------------------------------------------

ODE_SAMPLERS = {  # sampler -> (options, convergence order at least)
    "euler": ({}, 1),
    "heun": ({}, 2),
    "dpm_2": ({}, 2),
    "lms": ({}, 2),
    "dpmpp_2m": ({}, 2),
    "uni_pc": ({}, 2),
    "uni_pc_bh2": ({}, 2),
    "euler_ancestral": ({"eta": 0.0}, 1),
    "dpmpp_2s_ancestral": ({"eta": 0.0}, 2),
    "dpmpp_sde": ({"eta": 0.0}, 2),
    "dpmpp_2m_sde": ({"eta": 0.0}, 2),
    "dpmpp_3m_sde": ({"eta": 0.0}, 2),
}


@pytest.mark.parametrize("name", list(ODE_SAMPLERS))
def test_deterministic_samplers_converge_to_the_exact_ode_solution(table, name):
    options, order = ODE_SAMPLERS[name]
    x_noise = _start(shape=(1, 1, 16, 16))
    errors = []
    for steps in (20, 40):
        sigmas = calculate_sigmas(table, "karras", steps)[:-1].double()  # stop at sigma_min: no final jump
        x = (x_noise * float(sigmas[0])).double()
        out = SAMPLERS[name](gaussian_denoiser, x, sigmas, None, NoiseSource(0), **options)
        target = exact_ode(x, float(sigmas[0]), float(sigmas[-1]))
        errors.append(float((out - target).abs().max() / target.abs().max()))
    assert errors[0] < (0.1 if order == 1 else 0.02), errors
    assert errors[1] < errors[0] / (2**order) * 1.6, errors  # the error shrinks at the method's order


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS - {"lcm"}))
def test_stochastic_samplers_sample_the_data_distribution(table, name):
    x_noise = torch.randn((1, 1, 128, 128), generator=torch.Generator().manual_seed(3))
    sigmas = calculate_sigmas(table, "karras", 40)
    x = x_noise * (1 + float(sigmas[0]) ** 2) ** 0.5
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, None, NoiseSource(17))
    first_order = name in ("euler_ancestral", "ddpm")  # (the same method: DDPM's posterior step in VE form)
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(C, rel=0.1 if first_order else 0.03)


def test_every_sampler_has_the_common_signature_and_reports_each_step(table):
    sigmas = calculate_sigmas(table, "karras", 5)
    x = _start(shape=(1, 4, 4, 4)) * float(sigmas[0])
    for name in SAMPLER_NAMES:
        seen = []
        out = SAMPLERS[name](gaussian_denoiser, x.clone(), sigmas, seen.append, NoiseSource(1))
        assert out.shape == x.shape and torch.isfinite(out).all(), name
        assert seen == list(range(5)), (name, seen)
        if name in STOCHASTIC_SAMPLERS:
            with pytest.raises(ValueError, match="NoiseSource"):
                SAMPLERS[name](gaussian_denoiser, x.clone(), sigmas, None, None)
        else:
            torch.testing.assert_close(SAMPLERS[name](gaussian_denoiser, x.clone(), sigmas), out)
    assert set(ISSUE_SAMPLERS) <= set(SAMPLER_NAMES) and set(ISSUE_SCHEDULERS) <= set(SCHEDULER_NAMES)
    torch.testing.assert_close(
        SAMPLERS["ddim"](gaussian_denoiser, x, sigmas), SAMPLERS["euler"](gaussian_denoiser, x, sigmas)
    )


# -- noise ---------------------------------------------------------------------------------------


def test_gaussian_noise_is_the_seeded_cpu_stream():
    x = torch.zeros(2, 3, 4)
    draw = NoiseSource(42).gaussian(x)
    generator = torch.Generator().manual_seed(42)
    assert torch.equal(draw(torch.tensor(2.0), torch.tensor(1.0)), torch.randn(x.shape, generator=generator))
    assert torch.equal(draw(), torch.randn(x.shape, generator=generator))


def test_brownian_noise_is_reproducible_and_brownian():
    x = torch.zeros(1, 4, 32, 32)
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.03, 0.0])
    a, b = NoiseSource(2**40 + 3).brownian(x, sigmas), NoiseSource(2**40 + 3).brownian(x, sigmas)
    other = NoiseSource(5).brownian(x, sigmas)
    s0, s1, s2 = torch.tensor(7.0), torch.tensor(3.0), torch.tensor(1.0)
    n01 = a(s0, s1)
    assert torch.equal(n01, b(s0, s1)) and not torch.allclose(n01, other(s0, s1))
    # queried in another order, the same path gives the same increments
    n12, n02 = b(s1, s2), b(s0, s2)
    assert torch.allclose(a(s1, s2), n12) and torch.allclose(a(s0, s2), n02)
    # W(s2) - W(s0) = (W(s1) - W(s0)) + (W(s2) - W(s1)), each normalised by sqrt(|ds|)
    torch.testing.assert_close(n02 * math.sqrt(6.0), n01 * 2.0 + n12 * math.sqrt(2.0), rtol=1e-4, atol=1e-4)
    # reversed direction flips the sign; each normalised increment is N(0, 1), disjoint ones independent
    torch.testing.assert_close(a(s1, s0), -n01)
    for n in (n01, n12):
        assert abs(float(n.mean())) < 0.05 and float(n.std()) == pytest.approx(1.0, abs=0.05)
    assert abs(float((n01 * n12).mean())) < 0.05
    # a seed per batch item: each item its own path
    batch = torch.zeros(2, 4, 8, 8)
    per_item = BrownianTreeNoise(batch, 0.03, 14.6, seed=[1, 2])(s0, s1)
    single = BrownianTreeNoise(batch[:1], 0.03, 14.6, seed=1)(s0, s1)
    assert torch.equal(per_item[0], single[0])


def test_sde_samplers_are_reproducible_and_name_torchsde_when_missing(table, monkeypatch):
    sigmas = calculate_sigmas(table, "karras", 6)
    x = _start(shape=(1, 4, 8, 8)) * (1 + float(sigmas[0]) ** 2) ** 0.5
    for name in sorted(BROWNIAN_SAMPLERS):
        one = SAMPLERS[name](gaussian_denoiser, x, sigmas, None, NoiseSource(77))
        assert torch.equal(one, SAMPLERS[name](gaussian_denoiser, x, sigmas, None, NoiseSource(77)))
        assert not torch.allclose(one, SAMPLERS[name](gaussian_denoiser, x, sigmas, None, NoiseSource(78)))
    monkeypatch.setitem(sys.modules, "torchsde", None)
    with pytest.raises(ImportError, match="pip install torchsde"):
        SAMPLERS["dpmpp_2m_sde"](gaussian_denoiser, x, sigmas, None, NoiseSource(77))
    # eta = 0 draws no noise, so needs no torchsde
    SAMPLERS["dpmpp_2m_sde"](gaussian_denoiser, x, sigmas, None, NoiseSource(77), eta=0.0)


# -- against ComfyUI -------------------------------------------------------------------------------

# The toy denoiser, as source run on both sides: the Gaussian-data denoiser plus a fixed small conv
# net's nonlinear term (weights from the test, saved to a file), so the samplers see a denoiser
# that mixes pixels and channels and is not linear in x.
TOY_SOURCE = """
import torch
import torch.nn.functional as F

def make_toy(weights):
    w, b, mean = weights["w"], weights["b"], weights["mean"]
    def denoiser(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        gauss = (0.49 * x + s * s * mean) / (0.49 + s * s)
        x_in = x / (s * s + 1).sqrt()
        return gauss + 0.1 * torch.tanh(F.conv2d(x_in, w, b, padding=1)) * s / (1 + s)
    return denoiser
"""

COMFY_SCRIPT = '''
import json, sys, time
sys.argv = ["main.py", "--cpu"]
checkout, workdir = __import__("os").environ["KS_COMFYUI"], __import__("os").environ["KS_WORKDIR"]
sys.path.insert(0, checkout)
import comfy.options
comfy.options.enable_args_parsing()
import torch
torch.set_num_threads(1)
import comfy.model_sampling, comfy.sample, comfy.samplers
from types import SimpleNamespace

namespace = {}
exec(open(workdir + "/toy.py").read(), namespace)
weights = torch.load(workdir + "/weights.pt")
cases = json.load(open(workdir + "/cases.json"))
toys = {torch.float32: namespace["make_toy"](weights),
        torch.float64: namespace["make_toy"]({k: v.double() for k, v in weights.items()})}

def model_sampling(kind):
    if kind == "lcm":
        from comfy_extras.nodes_model_advanced import ModelSamplingDiscreteDistilled as base
    else:
        base = comfy.model_sampling.ModelSamplingDiscrete
    cls = type("MS", (base, comfy.model_sampling.EPS), {})
    return cls(None, zsnr=True) if kind == "zsnr" else cls(None)

class Wrapped:
    """What ComfyUI's samplers see of a model: CFGGuider-like callable + model_sampling access."""
    def __init__(self, ms, toy):
        self.inner_model = SimpleNamespace(model_sampling=ms)
        self.model_patcher = SimpleNamespace(get_model_object=lambda name: ms)
        self.toy = toy
    def __call__(self, x, sigma, model_options={}, seed=None):
        return self.toy(x, sigma)

results, started = {}, time.time()
for case in cases:
    ms = model_sampling(case["table"])
    ks = comfy.samplers.KSampler.__new__(comfy.samplers.KSampler)
    ks.model = SimpleNamespace(get_model_object=lambda name, ms=ms: ms)
    ks.device, ks.sampler, ks.scheduler = "cpu", case["sampler"], case["scheduler"]
    ks.set_steps(case["steps"], case["denoise"])
    latent = weights["latent"][: case["shape"][0]] if case["denoise"] < 1 else torch.zeros(case["shape"])
    latent = latent[..., : case["shape"][2], : case["shape"][3]].contiguous()
    noise = comfy.sample.prepare_noise(latent, case["seed"])
    result = {"sigmas": ks.sigmas.clone(), "noise": noise, "latent": latent}
    # float32 as ComfyUI runs; float64 (a float64 default dtype for UniPC's coefficient tensors)
    # to separate the samplers' semantics from float32 rounding
    for dtype, key in ((torch.float32, "out"), (torch.float64, "out64")):
        if case["options"]:
            sampler = comfy.samplers.ksampler(case["sampler"], case["options"])
        else:
            sampler = comfy.samplers.sampler_object(case["sampler"])
        torch.set_default_dtype(dtype)
        try:
            result[key] = sampler.sample(Wrapped(ms, toys[dtype]), ks.sigmas.clone().to(dtype),
                                         {"seed": case["seed"], "model_options": {}}, None, noise.to(dtype),
                                         latent_image=latent.to(dtype), denoise_mask=None, disable_pbar=True)
        finally:
            torch.set_default_dtype(torch.float32)
    results[case["id"]] = result
torch.save(results, workdir + "/comfy.pt")
print("done", len(results), "cases in", round(time.time() - started, 1), "s")
'''


def _comfy_cases() -> list[dict]:
    cases = []

    def add(table, sampler, scheduler, steps=8, denoise=1.0, seed=42, shape=(1, 4, 8, 8), options=None):
        cases.append(
            dict(
                id=f"{table}/{sampler}/{scheduler}/{steps}/{denoise}/{seed}/{'x'.join(map(str, shape))}"
                f"/{json.dumps(options or {}, sort_keys=True)}",
                table=table,
                sampler=sampler,
                scheduler=scheduler,
                steps=steps,
                denoise=denoise,
                seed=seed,
                shape=list(shape),
                options=options or {},
            )
        )

    for sampler in SAMPLER_NAMES:  # every pair on SD1.5's table
        for scheduler in SCHEDULER_NAMES:
            add("sd15", sampler, scheduler)
    # SDXL: ComfyUI samples it on the same scaled-linear table; its latents are larger, batches common
    for sampler, scheduler in [
        ("dpmpp_2m", "karras"),
        ("dpmpp_sde", "karras"),
        ("dpmpp_2m_sde", "exponential"),
        ("dpmpp_3m_sde", "beta"),
        ("euler_ancestral", "normal"),
        ("uni_pc", "sgm_uniform"),
        ("ddpm", "simple"),
        ("lcm", "sgm_uniform"),
    ]:
        add("sd15", sampler, scheduler, steps=10, seed=2**40 + 11, shape=(2, 4, 16, 12))
    # img2img (denoise < 1, KSampler's noise_scaling of a latent), few and many steps
    for sampler, scheduler in [
        ("euler", "normal"),
        ("dpmpp_2m_sde", "karras"),
        ("uni_pc", "karras"),
        ("dpm_2_ancestral", "simple"),
        ("dpmpp_sde", "beta"),
        ("lms", "exponential"),
    ]:
        add("sd15", sampler, scheduler, steps=6, denoise=0.6, seed=7)
    for sampler, scheduler, steps in [
        ("uni_pc", "karras", 1),  # ComfyUI's order-0 UniPC: no step taken
        ("uni_pc_bh2", "normal", 1),
        ("uni_pc", "karras", 2),
        ("uni_pc", "normal", 3),
        ("dpmpp_3m_sde", "normal", 3),
        ("heun", "simple", 1),
        ("lms", "karras", 2),
        ("dpmpp_2m", "beta", 25),
        ("dpmpp_2m_sde", "karras", 30),
        ("ddim", "ddim_uniform", 7),
    ]:
        add("sd15", sampler, scheduler, steps=steps)
    add("sd15", "uni_pc", "simple", steps=1, denoise=0.5, seed=7)  # one img2img step: x rescaled only
    # ComfyUI's option semantics
    for sampler, options in [
        ("euler_ancestral", {"eta": 0.5, "s_noise": 1.1}),
        ("dpmpp_sde", {"r": 0.4, "eta": 0.8}),
        ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7}),
        ("dpmpp_3m_sde", {"s_noise": 0.9}),
        ("lms", {"order": 3}),
        ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ]:
        add("sd15", sampler, "karras", options=options)
    # zero-terminal-SNR and LCM's distilled table
    for sampler, scheduler in [
        ("euler", "normal"),
        ("dpmpp_2m", "karras"),
        ("euler_ancestral", "simple"),
        ("dpmpp_2m_sde", "sgm_uniform"),
    ]:
        add("zsnr", sampler, scheduler)
    for scheduler in SCHEDULER_NAMES:
        add("lcm", "lcm", scheduler, steps=4)
    for sampler, scheduler in [("euler", "sgm_uniform"), ("dpmpp_2m", "normal"), ("dpmpp_sde", "simple")]:
        add("lcm", sampler, scheduler, steps=6)
    return cases


@pytest.fixture(scope="module")
def comfy_results(tmp_path_factory):
    checkout = os.environ.get("COMFYUI_PATH")
    if not checkout or not (Path(checkout) / "comfy" / "k_diffusion" / "sampling.py").is_file():
        pytest.skip("COMFYUI_PATH not set (or not a ComfyUI checkout)")
    python = os.environ.get("COMFYUI_PYTHON") or next(
        (str(p) for p in (Path(checkout) / "venv/bin/python", Path(checkout) / ".venv/bin/python") if p.is_file()),
        sys.executable,
    )
    workdir = tmp_path_factory.mktemp("k_sampling_comfy")
    generator = torch.Generator().manual_seed(2024)
    weights = {
        "w": torch.randn(4, 4, 3, 3, generator=generator) * 0.2,
        "b": torch.randn(4, generator=generator) * 0.1,
        "mean": torch.randn(1, 4, 1, 1, generator=generator) * 0.3,
        "latent": torch.randn(2, 4, 16, 12, generator=generator),
    }
    torch.save(weights, workdir / "weights.pt")
    (workdir / "toy.py").write_text(TOY_SOURCE)
    cases = _comfy_cases()
    (workdir / "cases.json").write_text(json.dumps(cases))
    (workdir / "run.py").write_text(COMFY_SCRIPT)
    started = time.time()
    done = subprocess.run(
        [python, str(workdir / "run.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KS_COMFYUI": checkout, "KS_WORKDIR": str(workdir)},
    )
    assert done.returncode == 0, f"ComfyUI side failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    print(done.stdout.strip(), f"(subprocess {time.time() - started:.1f} s)")
    namespace: dict = {}
    exec(TOY_SOURCE, namespace)
    toys = {
        torch.float32: namespace["make_toy"](weights),
        torch.float64: namespace["make_toy"]({k: v.double() for k, v in weights.items()}),
    }
    return cases, torch.load(workdir / "comfy.pt"), toys


def _our_run(case, reference, toy, dtype=torch.float32):
    kind = case["table"]
    table = DistilledSigmas(SD15) if kind == "lcm" else DiscreteSigmas(SD15, zsnr=(kind == "zsnr"))
    sigmas = ksampler_sigmas(table, case["scheduler"], case["steps"], case["denoise"], sampler=case["sampler"])
    noise = torch.randn(case["shape"], generator=torch.manual_seed(case["seed"]))  # ComfyUI's prepare_noise
    assert torch.equal(noise, reference["noise"]), "ComfyUI's initial noise differs from a seeded CPU draw"
    latent = reference["latent"]
    s0 = float(sigmas[0])
    max_denoise = math.isclose(float(table.sigma_max), s0, rel_tol=1e-5) or s0 > float(table.sigma_max)
    run_sigmas = sigmas.to(dtype)
    x = noise.to(dtype) * ((1 + run_sigmas[0] ** 2) ** 0.5 if max_denoise else run_sigmas[0]) + latent.to(dtype)
    out = SAMPLERS[case["sampler"]](toy, x, run_sigmas, None, NoiseSource(case["seed"]), **case["options"])
    return sigmas, out


# ComfyUI's UniPC works in VP space, where float32 lambda = log(alpha / sigma_vp) loses digits to
# cancellation, and its coefficients divide by powers of the step in lambda: on a schedule with
# tiny steps (linear_quadratic's first steps are 1 % apart) ComfyUI's own float32 result moves
# 1.2e-4 from its float64 one. The float64 runs below agree to ~1e-13 there, so the method is
# the same; only for those pairs does the float32 comparison allow ComfyUI's rounding.
FLOAT32_ALLOWANCE = {("uni_pc", "linear_quadratic"): 2.5e-4, ("uni_pc_bh2", "linear_quadratic"): 2.5e-4}


def test_every_pair_matches_comfyui(comfy_results):
    cases, references, toys = comfy_results
    worst, worst64, failures, started = {}, {}, [], time.time()
    for case in cases:
        reference = references[case["id"]]
        sigmas, out = _our_run(case, reference, toys[torch.float32])
        if sigmas.shape != reference["sigmas"].shape or not torch.allclose(
            sigmas, reference["sigmas"].float(), rtol=1e-6, atol=0
        ):
            failures.append(f"{case['id']}: sigmas {sigmas.tolist()} != ComfyUI's {reference['sigmas'].tolist()}")
            continue
        error = worst[case["id"]] = _rel(out, reference["out"])
        if not error <= FLOAT32_ALLOWANCE.get((case["sampler"], case["scheduler"]), 1e-4):
            failures.append(f"{case['id']}: relative error {error:.3g}")
        _, out64 = _our_run(case, reference, toys[torch.float64], torch.float64)
        error64 = worst64[case["id"]] = _rel(out64, reference["out64"])
        if not error64 <= 1e-9:
            failures.append(f"{case['id']}: float64 relative error {error64:.3g}")
    elapsed = time.time() - started
    if os.environ.get("K_SAMPLING_VERBOSE"):
        for case_id, error in sorted(worst.items(), key=lambda item: -item[1])[:25]:
            print(f"  {error:.2e}  {case_id}")
    by_sampler: dict[str, list[float]] = {}
    for case_id, error in worst.items():
        entry = by_sampler.setdefault(case_id.split("/")[1], [0.0, 0.0])
        entry[0], entry[1] = max(entry[0], error), max(entry[1], worst64[case_id])
    print(f"\n{len(worst)} cases (float32 and float64) in {elapsed:.1f} s; max relative error per sampler:")
    for sampler, (error, error64) in by_sampler.items():
        print(f"  {sampler:20s} float32 {error:.2e}   float64 {error64:.2e}")
    assert not failures, "\n".join(failures)
    covered = {(c["sampler"], c["scheduler"]) for c in cases}
    assert {(a, b) for a in ISSUE_SAMPLERS for b in ISSUE_SCHEDULERS} <= covered


def test_the_nodes_offer_exactly_the_samplers_and_schedulers_k_sampling_has():
    from lcm_accel.hosts.standalone import names

    assert names.SAMPLER_NAMES == SAMPLER_NAMES
    assert names.SCHEDULER_NAMES == SCHEDULER_NAMES
