"""QALoRA building blocks: straight-through fake quantization, gradients reaching the LoRA factors and
both kinds of step sizes, per-sampling-step activation step sizes, a few hand-written optimisation
steps lowering the distillation loss on a tiny UNet, and the export matching the trained student."""

from __future__ import annotations

import copy

import pytest
import torch

from lcm_accel.fixtures import tiny_model
from lcm_accel.quantize import quantized_layers
from lcm_accel.quantize.qalora import (
    QALoRALayer,
    build_qalora_student,
    export_qalora,
    fake_quant,
    qalora_layers,
    qalora_step,
    round_ste,
    sampling_step,
    teacher_trajectories,
    trainable_parameters,
)


def test_round_ste_passes_the_gradient_straight_through():
    x = torch.tensor([0.2, 1.6, -2.4], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def test_fake_quant_equals_real_quantization_forward():
    from lcm_accel.quantize import dequantize, quantize

    w = torch.randn(16, 32)
    q = quantize(w, "int8")
    assert torch.allclose(fake_quant(w, q.scales[:, None], 127), dequantize(q), atol=1e-7)


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
def test_gradients_reach_lora_weight_steps_and_activation_steps(fmt):
    torch.manual_seed(0)
    layer = QALoRALayer(torch.nn.Conv2d(8, 16, 3, padding=1), fmt, rank=2, num_steps=3, group_size=8)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)  # B starts at 0; give A a gradient path too
    x = torch.randn(2, 8, 6, 6)
    with sampling_step(1):
        layer(x).square().mean().backward()
    for p in (layer.lora_A, layer.lora_B, layer.weight_steps):
        assert p.grad is not None and p.grad.abs().sum() > 0
    act = layer.act_quant.step_sizes.grad
    assert act[1] != 0 and act[0] == 0 and act[2] == 0  # only this sampling step's step size
    assert bool(layer.act_quant.initialized[1]) and not bool(layer.act_quant.initialized[0])


def test_a_few_steps_lower_the_distillation_loss_and_export_matches_the_student():
    teacher = copy.deepcopy(tiny_model("sd15").unet).float().eval()
    torch.manual_seed(0)  # the LoRA A init
    student = build_qalora_student(teacher, "int4", rank=4, num_steps=2, act_bits=None, group_size=16)
    assert qalora_layers(student) and all(
        not p.requires_grad for n, p in student.named_parameters() if "lora_" not in n and "steps" not in n
    )
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 77, teacher.config.cross_attention_dim, generator=g)
    batch = teacher_trajectories(teacher, cond, steps=2, latent_shape=(1, 4, 8, 8), seed=0)
    assert len(batch.latents) == 2 and batch.timesteps[0] > batch.timesteps[1]
    groups = trainable_parameters(student)
    # step sizes are ~1e-2: a small lr for them (Adam's steps are ~lr in size)
    optimizer = torch.optim.Adam(
        [{"params": groups["lora"], "lr": 5e-2}, {"params": groups["weight_steps"], "lr": 1e-5}]
    )

    def total() -> float:
        with torch.no_grad():
            return sum(float(qalora_step(student, teacher, batch, i)) for i in range(2))

    before = total()
    for it in range(12):
        optimizer.zero_grad()
        qalora_step(student, teacher, batch, it % 2).backward()
        optimizer.step()
    after = total()
    assert after < 0.8 * before, (before, after)
    exported = export_qalora(student)
    assert len(quantized_layers(exported)) == len(qalora_layers(student))
    x, t = batch.latents[0], torch.tensor([batch.timesteps[0]])
    with torch.no_grad():
        torch.testing.assert_close(exported(x, t, cond).sample, student(x, t, cond).sample, rtol=1e-4, atol=1e-4)
