"""The LCD and guidance-distillation objectives against values computed by hand from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import micro_unet, one_thread

from lcm_accel.training.guidance import cfg_combine, guidance_distillation_loss, teacher_cfg_output
from lcm_accel.training.lcd import LCDDraw, LCDSettings, ddim_solver_grid, lcd_loss

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule, written out here independently of lcm_scheduler."""
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return torch.tensor(out, dtype=torch.float64)


def test_solver_grid_is_the_skipping_step_ddim_grid():
    grid = ddim_solver_grid(1000, 50)
    assert grid.skip == 20
    assert grid.timesteps.tolist() == [20 * i - 1 for i in range(1, 51)]  # diffusers' DDIMSolver: k*i - 1
    assert grid.end_timesteps(torch.tensor([19, 39, 999])).tolist() == [0, 19, 979]


@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_lcd_loss_of_one_step_equals_the_hand_computed_value(loss):
    acp = _sd_alphas_cumprod()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    ec = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    index, w = torch.tensor([0, 37]), torch.tensor([5.0, 12.0], dtype=torch.float64)
    # eps-predicting toy models: output = a * x + conditioning
    student = lambda x, t, c: 0.3 * x + c["e"]  # noqa: E731
    teacher = lambda x, t, c: 0.5 * x + 0.8 * c["e"]  # noqa: E731
    settings = LCDSettings(loss=loss, w_min=5, w_max=15)
    out = lcd_loss(
        student,
        teacher,
        student,
        z,
        {"e": ec},
        {"e": torch.zeros_like(ec)},
        acp.float().double(),
        ddim_solver_grid(),
        LCDDraw(index, noise, w),
        settings,
    )

    expected = []
    for b in range(2):
        t = 20 * int(index[b]) + 19
        s = max(t - 20, 0)
        a_t, a_s = float(acp[t]), float(acp[s])
        x_t = math.sqrt(a_t) * z[b] + math.sqrt(1 - a_t) * noise[b]

        def f(eps, x, tt):  # consistency function: c_skip x + c_out x0, sigma_data 0.5, scaling 10
            x0 = (x - math.sqrt(1 - float(acp[tt])) * eps) / math.sqrt(float(acp[tt]))
            c_skip = 0.25 / ((10 * tt) ** 2 + 0.25)
            c_out = 10 * tt / math.sqrt((10 * tt) ** 2 + 0.25)
            return c_skip * x + c_out * x0

        pred = f(0.3 * x_t + ec[b], x_t, t)
        eps_c, eps_u = 0.5 * x_t + 0.8 * ec[b], 0.5 * x_t
        eps = eps_u + float(w[b]) * (eps_c - eps_u)
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x_s = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
        target = f(0.3 * x_s + ec[b], x_s, s)
        d = pred - target
        expected.append(torch.sqrt(d**2 + 0.001**2) - 0.001 if loss == "huber" else d**2)
    expected = torch.stack(expected).mean()
    assert torch.allclose(out.loss.double(), expected, rtol=1e-5, atol=1e-9), (float(out.loss), float(expected))
    assert float(out.loss) > 0


def test_guidance_target_equals_the_teachers_cfg_output():
    """Through the LoRA'd UNet with its adapter disabled, the target is the base UNet's two-pass CFG."""
    from lcm_accel.training.distill import teacher_fn, unet_fn
    from lcm_accel.training.student import add_lora

    base = micro_unet(1)
    student_unet = micro_unet(1)
    torch.manual_seed(0)
    params = add_lora(student_unet, 4)
    with torch.no_grad():
        for _, p in params:
            p.normal_(0, 0.2)  # a LoRA that changes the output, so a leaking adapter would show
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 700])
    cond = {"encoder_hidden_states": torch.randn(2, 3, 16, generator=g)}
    uncond = {"encoder_hidden_states": torch.zeros(2, 3, 16)}
    w = 4.5
    with torch.no_grad():
        eps_c = base(x, t, **cond).sample
        eps_u = base(x, t, **uncond).sample
    expected = eps_u + w * (eps_c - eps_u)
    target = teacher_cfg_output(teacher_fn(student_unet), x, t, cond, uncond, w)
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)
    student_out = unet_fn(student_unet)(x, t, cond)
    assert not torch.allclose(student_out, eps_c, atol=1e-4)  # the LoRA is active outside the teacher
    assert torch.allclose(cfg_combine(eps_c, eps_u, torch.tensor([w, w])), expected)

    # the guidance-distillation loss is the MSE of the one-pass student against that target at x_t
    z, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    acp = _sd_alphas_cumprod().float()
    loss, x_t = guidance_distillation_loss(
        unet_fn(student_unet), teacher_fn(student_unet), z, noise, t, cond, uncond, w, acp
    )
    a = acp[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(x_t, a.sqrt() * z + (1 - a).sqrt() * noise, atol=1e-6)
    with torch.no_grad():
        ref_target = base(x_t, t, **uncond).sample + w * (base(x_t, t, **cond).sample - base(x_t, t, **uncond).sample)
        ref = torch.mean((student_unet(x_t, t, **cond).sample - ref_target) ** 2)
    assert torch.allclose(loss.detach(), ref, rtol=1e-5)


def test_settings_refuse_what_cannot_work():
    from lcm_accel.training.distill import DistillSettings

    with pytest.raises(ValueError, match="fixed --w"):
        DistillSettings(mode="guidance", lcd=LCDSettings())
    with pytest.raises(ValueError, match="w_min"):
        LCDSettings(w_min=10, w_max=5)
    with pytest.raises(ValueError, match="loss"):
        LCDSettings(loss="l1")
