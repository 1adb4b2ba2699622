"""An oracle check of the LCD objective: where the exact teacher ODE is known in closed form, the
exact consistency function has (float-precision) zero LCD loss, and near misses do not.

Data: one point per condition (z_c for the prompt, z_u for the empty prompt). The exact eps-teacher
is then eps(x, t) = (x - sqrt(a_t) z) / sqrt(1 - a_t), its x0 prediction is z at every t, and the
guided teacher (eps_u + w (eps_c - eps_u)) is the exact teacher of the single point
z_g = z_u + w (z_c - z_u). On that teacher's probability-flow ODE eps is constant, so the exact
consistency function (the ODE's end point at timestep 0, where the boundary condition f(x, 0) = x
holds) is f*(x_t, t) = sqrt(a_0) z_g + sqrt(1 - a_0) (x_t - sqrt(a_t) z_g) / sqrt(1 - a_t).
A student whose f equals f* must give zero loss for every grid index and every w: a wrong end
timestep, solver step, boundary scaling, guidance convention (w vs w + 1) or target timestep would not.
"""

from __future__ import annotations

import pytest
import torch

from lcm_accel.lcm_scheduler.boundary import consistency_scalings
from lcm_accel.lcm_scheduler.schedule import make_alphas_cumprod
from lcm_accel.training.lcd import LCDDraw, LCDSettings, ddim_solver_grid, lcd_loss

ACP = make_alphas_cumprod().double()


def _point_teacher(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """The exact eps-prediction model of data = the single point cond["z"]."""
    a = ACP[t].reshape(-1, 1, 1, 1)
    return (x - a.sqrt() * cond["z"]) / (1 - a).sqrt()


def _oracle_student(z_guided: torch.Tensor):
    """An eps-prediction model whose consistency output c_skip x + c_out x0 is exactly f*(x, t)."""

    def model(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        a = ACP[t].reshape(-1, 1, 1, 1)
        a0 = ACP[0]
        f_star = a0.sqrt() * z_guided + (1 - a0).sqrt() * (x - a.sqrt() * z_guided) / (1 - a).sqrt()
        c_skip, c_out = (c.double().reshape(-1, 1, 1, 1) for c in consistency_scalings(t))
        c_out = torch.where(c_out == 0, torch.ones_like(c_out), c_out)  # t = 0: f = x whatever x0 is
        x0 = (f_star - c_skip * x) / c_out
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model


def _loss(student, w: torch.Tensor, z_c, z_u, data, noise, index) -> float:
    settings = LCDSettings(loss="l2", w_min=1.0, w_max=20.0)
    out = lcd_loss(
        student,
        _point_teacher,
        student,
        data,
        {"z": z_c},
        {"z": z_u},
        ACP,
        ddim_solver_grid(),
        LCDDraw(index, noise, w),
        settings,
    )
    return float(out.loss)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    shape = (50, 2, 3, 3)
    z_c, z_u = torch.randn(shape, generator=g).double(), torch.randn(shape, generator=g).double()
    noise = torch.randn(shape, generator=g).double()
    index = torch.arange(50)  # every grid point, 19 .. 999 (index 0 ends at timestep 0)
    w = torch.linspace(1.0, 9.0, 50).double()
    return z_c, z_u, noise, index, w


def test_exact_consistency_function_has_zero_lcd_loss(setup):
    z_c, z_u, noise, index, w = setup
    z_g = z_u + w.reshape(-1, 1, 1, 1) * (z_c - z_u)
    # the clean latent the noise is added to is irrelevant for f* (the teacher decides the ODE); use z_c
    assert _loss(_oracle_student(z_g), w, z_c, z_u, z_c, noise, index) < 1e-20


def test_near_misses_have_clearly_nonzero_lcd_loss(setup):
    """Each is many orders of magnitude above the oracle's loss (exactly 0 in float64)."""
    z_c, z_u, noise, index, w = setup
    w4 = w.reshape(-1, 1, 1, 1)
    diffusers_convention = z_c + w4 * (z_c - z_u)  # out_c + w (out_c - out_u): w + 1 in our convention
    assert _loss(_oracle_student(diffusers_convention), w, z_c, z_u, z_c, noise, index) > 1e-6
    unguided = z_c
    assert _loss(_oracle_student(unguided), w, z_c, z_u, z_c, noise, index) > 1e-6
    # the data end (x0 = z_g exactly) instead of the ODE's end at timestep 0: small but far above zero
    z_g = z_u + w4 * (z_c - z_u)

    def plain_x0(x, t, cond):
        a = ACP[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * z_g) / (1 - a).sqrt()

    assert _loss(plain_x0, w, z_c, z_u, z_c, noise, index) > 1e-8
