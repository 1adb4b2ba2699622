"""QALoRA building blocks (EfficientDM, He et al. 2023, arXiv 2310.03270), pure torch.

The student is the merged float UNet with every quantizable layer replaced by a `QALoRALayer`:

    y = Q_a(x) (*) Q_w(W + s (.) B A)          (*) = linear or conv

- W: the frozen merged float weight (LCM-LoRA + styles already merged by `lora_merge`).
- B A: a learnable LoRA (B starts at zero, so the student starts as plain quantization).
- Q_w: weight fake-quantization with straight-through rounding and LEARNABLE step sizes s (LSQ,
  Esser et al. 2020): one per output channel (int8, fp8) or per group (int4), initialised from
  the max-abs rule of `formats`; LSQ's gradient scale 1 / sqrt(elements per step * qmax) keeps
  the step-size updates in proportion to the weights they cover.
- Scale-aware LoRA optimisation (our formulation of the paper's idea): the LoRA update is expressed
  in units of each output channel's quantization step, Delta W = s_row (.) (B A) with s_row detached.
  The gradient reaching B is thus scaled per channel by that channel's step: channels with coarse
  steps get proportionally larger updates, fine channels smaller ones, so one learning rate suits
  every channel, and an update of one unit moves a weight by about one quantization level.
- Q_a: activation fake-quantization (symmetric, `act_bits`) with one learnable step size PER
  SAMPLING STEP of the LCM schedule (temporal LSQ): the sampler loop sets the module-level step
  index (`sampling_step`), each quantizer picks its own step size for that index; a step size is
  initialised from the first activations it sees at that index.

The teacher is the merged float UNet; data-free: `teacher_trajectories` runs the teacher's own
LCM multistep sampling (`lcm_scheduler.sample_lcm_vp`) from noise and records the latents the
student sees at each step; `qalora_step` is the distillation loss (MSE between the teacher's and
the student's noise predictions on those latents) that the trainer's loop backpropagates.
`export_qalora` merges the LoRA and quantizes with the learned step sizes into QuantLinear /
QuantConv2d layers (a quantized UNet like `quantize_unet` makes; its checkpoints save the same way).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .formats import (
    DEFAULT_GROUP_SIZE,
    FP8_MAX,
    INT4_SYM_MAX,
    INT8_MAX,
    int4_scales,
    normalize_format,
    per_channel_scales,
)
from .unet import QuantizeError, quantize_layer, set_submodule, split_layers


# --------------------------------------------------------------------------- the sampling step
class _StepIndex:
    """The module-level "current sampling step" that temporal activation quantizers read."""

    value: int = 0


STEP = _StepIndex()


def set_sampling_step(index: int) -> None:
    """Tell every temporal activation quantizer which sampling step the next UNet call belongs to."""
    STEP.value = int(index)


@contextmanager
def sampling_step(index: int) -> Iterator[None]:
    """`with sampling_step(i): unet(...)` — the step index for the calls inside."""
    previous = STEP.value
    set_sampling_step(index)
    try:
        yield
    finally:
        STEP.value = previous


# --------------------------------------------------------------------------- fake quantization
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward, gradient multiplied by `factor` backward (LSQ's step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


def fake_quant(x: torch.Tensor, step: torch.Tensor, qmax: int, fmt: str = "int") -> torch.Tensor:
    """Symmetric fake-quantization q(x) * step with STE rounding; `step` broadcasts against x.
    fmt "fp8": e4m3 rounding of x / step (the same STE through the cast)."""
    scaled = x / step
    if fmt == "fp8_e4m3":
        clipped = scaled.clamp(-FP8_MAX, FP8_MAX)
        rounded = clipped + (clipped.to(torch.float8_e4m3fn).to(clipped.dtype) - clipped).detach()
    else:
        rounded = round_ste(scaled).clamp(-qmax, qmax)
    return rounded * step


class TemporalActQuant(torch.nn.Module):
    """Activation fake-quantizer with one learnable step size per sampling step (temporal LSQ)."""

    def __init__(self, num_steps: int, bits: int = 8):
        super().__init__()
        if num_steps < 1 or bits < 2:
            raise QuantizeError(f"TemporalActQuant needs num_steps >= 1 and bits >= 2, got {num_steps}, {bits}")
        self.qmax = 2 ** (bits - 1) - 1
        self.step_sizes = torch.nn.Parameter(torch.ones(num_steps))
        self.register_buffer("initialized", torch.zeros(num_steps, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = STEP.value
        if not 0 <= i < len(self.step_sizes):
            raise QuantizeError(f"sampling step {i} is outside this student's {len(self.step_sizes)} steps")
        if not self.initialized[i]:
            with torch.no_grad():
                self.step_sizes[i] = (x.detach().abs().amax() / self.qmax).clamp_min(1e-8)
                self.initialized[i] = True
        step = grad_scale(self.step_sizes[i], 1.0 / (x.numel() * self.qmax) ** 0.5).abs().clamp_min(1e-8)
        return fake_quant(x, step.to(x.dtype), self.qmax)


# --------------------------------------------------------------------------- the student layer
def _weight_qmax(fmt: str) -> int:
    return {"int8": INT8_MAX, "int4": INT4_SYM_MAX, "fp8_e4m3": int(FP8_MAX)}[fmt]


class QALoRALayer(torch.nn.Module):
    """Q_a(x) (*) Q_w(W + s_row (.) B A) for one Linear or Conv2d (see the module docstring)."""

    def __init__(
        self,
        layer: torch.nn.Module,
        fmt: str,
        rank: int,
        num_steps: int,
        act_bits: int | None = 8,
        group_size: int = DEFAULT_GROUP_SIZE,
    ):
        super().__init__()
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            raise QuantizeError(f"QALoRALayer wraps Linear or Conv2d, got {type(layer).__name__}")
        self.format, self.group_size = normalize_format(fmt), group_size
        self.is_conv = isinstance(layer, torch.nn.Conv2d)
        if self.is_conv:
            self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        weight = layer.weight.detach().float()
        self.register_buffer("weight", weight.clone())
        self.bias = (
            None if layer.bias is None else torch.nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
        )
        out, k = weight.shape[0], weight[0].numel()
        rank = max(1, min(rank, out, k))
        self.lora_A = torch.nn.Parameter(torch.randn(rank, k) / k**0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(out, rank))
        if self.format == "int4":
            steps, _ = int4_scales(weight, group_size)
        else:
            steps = per_channel_scales(weight, self.format)
        self.weight_steps = torch.nn.Parameter(steps)
        self.register_buffer("row_steps", steps.amax(dim=1) if steps.dim() == 2 else steps.clone())
        self.act_quant = TemporalActQuant(num_steps, act_bits) if act_bits else None

    def merged_weight(self) -> torch.Tensor:
        """W + s_row (.) B A in the weight's shape (differentiable in A and B)."""
        delta = (self.lora_B @ self.lora_A) * self.row_steps[:, None]
        return self.weight + delta.reshape(self.weight.shape)

    def _steps(self) -> torch.Tensor:
        per_step = self.weight[0].numel() if self.format != "int4" else self.group_size
        return grad_scale(self.weight_steps, 1.0 / (per_step * _weight_qmax(self.format)) ** 0.5).abs().clamp_min(1e-12)

    def quantized_weight(self) -> torch.Tensor:
        """Q_w(W + s_row (.) B A): fake-quantized with the learnable step sizes."""
        w = self.merged_weight()
        rows = w.reshape(w.shape[0], -1)
        steps = self._steps()
        if self.format == "int4":
            pad = (-rows.shape[1]) % self.group_size
            grouped = F.pad(rows, (0, pad)).view(rows.shape[0], -1, self.group_size)
            q = fake_quant(grouped, steps[..., None], INT4_SYM_MAX).flatten(1)[:, : rows.shape[1]]
        else:
            q = fake_quant(rows, steps[:, None], _weight_qmax(self.format), self.format)
        return q.reshape(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.quantized_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.is_conv:
            return F.conv2d(x, w, bias, *self.conv_args)
        return F.linear(x, w, bias)


# --------------------------------------------------------------------------- student / export
def build_qalora_student(
    unet: torch.nn.Module,
    fmt: str = "int4",
    rank: int = 4,
    num_steps: int = 4,
    act_bits: int | None = 8,
    keep: str | Sequence[str] | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> torch.nn.Module:
    """A copy of the merged float UNet whose quantizable layers (except `keep`) are QALoRALayers;
    only LoRA factors and step sizes are trainable."""
    fmt = normalize_format(fmt)
    student = copy.deepcopy(unet).float().requires_grad_(False)
    todo, _, _ = split_layers(student, keep)
    for name, module in todo:
        set_submodule(student, name, QALoRALayer(module, fmt, rank, num_steps, act_bits, group_size))
    return student


def qalora_layers(student: torch.nn.Module) -> list[tuple[str, QALoRALayer]]:
    return [(n, m) for n, m in student.named_modules() if isinstance(m, QALoRALayer)]


def trainable_parameters(student: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """{"lora": [...], "weight_steps": [...], "act_steps": [...]}: groups for the optimizer."""
    groups: dict[str, list[torch.nn.Parameter]] = {"lora": [], "weight_steps": [], "act_steps": []}
    for _, layer in qalora_layers(student):
        groups["lora"] += [layer.lora_A, layer.lora_B]
        groups["weight_steps"].append(layer.weight_steps)
        if layer.act_quant is not None:
            groups["act_steps"].append(layer.act_quant.step_sizes)
    return groups


@torch.no_grad()
def export_qalora(student: torch.nn.Module) -> torch.nn.Module:
    """A quantized UNet (QuantLinear / QuantConv2d, inference only) from a trained student: LoRA
    merged, weights quantized with the learned step sizes. Activation quantizers are not exported
    (the exported model is weight-only quantized, like `quantize_unet`'s)."""
    unet = copy.deepcopy(student)
    for name, layer in qalora_layers(unet):
        merged = layer.merged_weight().detach()
        if layer.is_conv:
            stride, padding, dilation, groups = layer.conv_args
            plain = torch.nn.Conv2d(
                merged.shape[1] * groups,
                merged.shape[0],
                merged.shape[2:],
                stride,
                padding,
                dilation,
                groups,
                bias=layer.bias is not None,
                device="meta",
            )
        else:
            plain = torch.nn.Linear(merged.shape[1], merged.shape[0], bias=layer.bias is not None, device="meta")
        plain.weight = torch.nn.Parameter(merged)
        if layer.bias is not None:
            plain.bias = torch.nn.Parameter(layer.bias.detach().clone())
        steps = layer.weight_steps.detach().abs()
        set_submodule(unet, name, quantize_layer(plain, layer.format, layer.group_size, scales=steps))
    return unet.requires_grad_(False)


# --------------------------------------------------------------------------- data-free distillation
@dataclass
class TrajectoryBatch:
    """Student inputs along a teacher LCM trajectory: latents x_t (one per step), the timesteps, the
    conditioning, and the step index of each entry in the schedule."""

    latents: list[torch.Tensor]
    timesteps: list[int]
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict | None = None


@torch.no_grad()
def teacher_trajectories(
    teacher: torch.nn.Module,
    encoder_hidden_states: torch.Tensor,
    steps: int = 4,
    latent_shape: Sequence[int] = (1, 4, 8, 8),
    seed: int = 0,
    original_inference_steps: int = 50,
    added_cond_kwargs: dict | None = None,
    noise_schedule: dict | None = None,
) -> TrajectoryBatch:
    """Run the teacher's own LCM sampling from noise (data-free) and record x_t at every step."""
    from ..lcm_scheduler import lcm_timesteps, make_alphas_cumprod, sample_lcm_vp

    schedule = noise_schedule or {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
    }
    acp = make_alphas_cumprod(
        schedule["beta_schedule"], schedule["beta_start"], schedule["beta_end"], schedule["num_train_timesteps"]
    )
    timesteps = lcm_timesteps(steps, original_inference_steps, num_train_timesteps=schedule["num_train_timesteps"])
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(latent_shape), generator=generator)
    latents: list[torch.Tensor] = []
    kwargs = {"encoder_hidden_states": encoder_hidden_states}
    if added_cond_kwargs:
        kwargs["added_cond_kwargs"] = added_cond_kwargs

    def model(x_t, t, **extra):
        return teacher(x_t, t, **extra).sample

    sample_lcm_vp(
        model,
        x,
        timesteps,
        acp,
        extra_args=kwargs,
        disable=True,
        generator=generator,
        callback=lambda info: latents.append(info["x"].clone()),
    )
    return TrajectoryBatch(latents, [int(t) for t in timesteps], encoder_hidden_states, added_cond_kwargs)


def qalora_step(
    student: torch.nn.Module, teacher: torch.nn.Module, batch: TrajectoryBatch, step_index: int
) -> torch.Tensor:
    """The distillation loss at one sampling step: MSE(student eps, teacher eps) on the teacher's x_t.
    Sets the temporal step index for the student's activation quantizers. Call `.backward()` on it."""
    x = batch.latents[step_index]
    t = torch.full((x.shape[0],), batch.timesteps[step_index], dtype=torch.long, device=x.device)
    kwargs = {"encoder_hidden_states": batch.encoder_hidden_states}
    if batch.added_cond_kwargs:
        kwargs["added_cond_kwargs"] = batch.added_cond_kwargs
    with torch.no_grad():
        target = teacher(x, t, **kwargs).sample
    with sampling_step(step_index):
        prediction = student(x, t, **kwargs).sample
    return F.mse_loss(prediction.float(), target.float())
