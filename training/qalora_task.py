"""QALoRA fine-tuning (EfficientDM) as a `loop.TrainTask`: a low-bit student distilled data-free from
the full-precision merged UNet along the teacher's own LCM trajectories.

    teacher = merged float UNet (base + LCM-LoRA + styles), frozen
    student = build_qalora_student(teacher, fmt, rank, lcm_steps, act_bits, keep)   # Q_a(x) * Q_w(W + s B A)
    batches = TrajectoryBatches(teacher, conditioning, prompts, lcm_steps, latent_shape, seed)
    task = QALoRATask(student, teacher, calibration=batches.trajectory(0))
    train(task, batches, LoopConfig(...))
    quantized_unet = export_qalora(task.student)                # weight-only QuantLinear / QuantConv2d

A batch is one sampling step of one teacher trajectory: the loop walks trajectory 0 step 0, 1, ..,
lcm_steps - 1, then trajectory 1, ...; each trajectory has its own seed and prompts, so the batch
position alone (saved in every checkpoint) determines what a resumed run sees.

Learning rates (AdamW, whose updates are about `lr` in absolute size): the LoRA factors take `lr`
(their update is already scale-aware: quantize/qalora.py multiplies B A by each output channel's
quantization step), each step-size tensor takes `step_lr * mean |its step sizes|`, i.e. it moves by
about `step_lr` of its own size per update, whatever the layer's scale. So activation step sizes have
a meaningful size when the optimizer is built, they are calibrated first (`calibrate_activation_steps`:
the max-abs rule on one trajectory, per sampling step) instead of lazily on the first training step.

Devices: batches live on the CPU (the generators are CPU generators); `OnDevice` runs each UNet on
its own device and hands outputs back on the inputs' device, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..quantize.qalora import (
    TrajectoryBatch,
    qalora_layers,
    qalora_step,
    sampling_step,
    teacher_trajectories,
    trainable_parameters,
)

DEFAULT_PROMPTS = (
    "a photo of a cat sitting on a windowsill",
    "a mountain lake at sunrise, highly detailed",
    "portrait of an old man, oil painting",
    "a futuristic city street at night, neon lights",
    "a bowl of fruit on a wooden table, studio lighting",
    "an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse by the sea",
    "a close-up photo of a red rose with water drops",
)


class OnDevice(torch.nn.Module):
    """A diffusers UNet called with inputs on any device: they are moved to the UNet's device and the
    output (`.sample`) comes back on the device of `sample`. Trainable names gain a `unet.` prefix."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def _device(self) -> torch.device:
        for tensor in self.unet.parameters():
            return tensor.device
        return next(self.unet.buffers()).device

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        device = self._device()
        if torch.is_tensor(timestep):
            timestep = timestep.to(device)
        if added_cond_kwargs is not None:
            added_cond_kwargs = {k: v.to(device) for k, v in added_cond_kwargs.items()}
        out = self.unet(
            sample.to(device),
            timestep,
            encoder_hidden_states=encoder_hidden_states.to(device),
            added_cond_kwargs=added_cond_kwargs,
            **kwargs,
        ).sample
        return UNet2DConditionOutput(sample=out.to(sample.device))


@dataclass
class QALoRABatch:
    """One training batch: a teacher trajectory and the sampling step to distil at."""

    trajectory: TrajectoryBatch
    step_index: int


def read_prompts(path: str | None) -> list[str]:
    """Prompts from a text file, one per line (blank lines skipped), or DEFAULT_PROMPTS for None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path}: the file has no prompts")
    return prompts


class TrajectoryBatches:
    """Data-free batches: the teacher's own LCM trajectories (`teacher_trajectories`), one sampling
    step per batch. Trajectory k uses seed `seed * 1_000_003 + k` (k counted over all processes) and
    prompts k*B .. k*B + B - 1 (cycled); its position is the only state, so resume is exact."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        conditioning: Callable[[list[str]], dict],
        prompts: Sequence[str],
        steps: int,
        latent_shape: Sequence[int],
        seed: int = 0,
        noise_schedule: dict | None = None,
        original_inference_steps: int = 50,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        if steps < 1:
            raise ValueError(f"--lcm-steps must be >= 1, got {steps}")
        if not prompts:
            raise ValueError("TrajectoryBatches needs at least one prompt")
        self.teacher, self.conditioning, self.prompts = teacher, conditioning, list(prompts)
        self.steps, self.latent_shape, self.seed = steps, tuple(latent_shape), seed
        self.noise_schedule, self.original_inference_steps = noise_schedule, original_inference_steps
        self.process_index, self.num_processes = process_index, num_processes
        self.position = 0
        self._cached: tuple[int, TrajectoryBatch] | None = None

    def trajectory(self, index: int) -> TrajectoryBatch:
        """This process's trajectory number `index` (recomputed from the seed; cached while in use)."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        k = index * self.num_processes + self.process_index
        batch = self.latent_shape[0]
        cond = self.conditioning([self.prompts[(k * batch + j) % len(self.prompts)] for j in range(batch)])
        trajectory = teacher_trajectories(
            self.teacher,
            cond["encoder_hidden_states"].cpu(),
            self.steps,
            self.latent_shape,
            seed=self.seed * 1_000_003 + k,
            original_inference_steps=self.original_inference_steps,
            added_cond_kwargs=cond.get("added_cond_kwargs"),
            noise_schedule=self.noise_schedule,
        )
        self._cached = (index, trajectory)
        return trajectory

    def next_batch(self) -> QALoRABatch:
        index, step = divmod(self.position, self.steps)
        self.position += 1
        return QALoRABatch(self.trajectory(index), step)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_processes": self.num_processes, "batch": self.latent_shape[0]}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved position. Trajectories are numbered per process (k = index x processes +
        rank), so only the same process count and --batch continue exactly; others are refused."""
        saved = (int(state.get("num_processes", self.num_processes)), int(state.get("batch", self.latent_shape[0])))
        if saved != (self.num_processes, self.latent_shape[0]):
            raise ValueError(
                f"this QALoRA checkpoint was written by {saved[0]} process(es) with --batch {saved[1]}; its "
                "data-free trajectories are numbered per process, so resume it with the same process "
                f"count and --batch (now {self.num_processes} and {self.latent_shape[0]})"
            )
        self.position = int(state["position"])


@torch.no_grad()
def calibrate_activation_steps(student: torch.nn.Module, trajectory: TrajectoryBatch) -> None:
    """Initialise every activation step size of the student (max-abs rule, per sampling step) by one
    student pass per step of `trajectory`. `student` takes CPU inputs (wrap it in `OnDevice`)."""
    kwargs = {"encoder_hidden_states": trajectory.encoder_hidden_states}
    if trajectory.added_cond_kwargs:
        kwargs["added_cond_kwargs"] = trajectory.added_cond_kwargs
    for i, (x, t) in enumerate(zip(trajectory.latents, trajectory.timesteps)):
        with sampling_step(i):
            student(x, torch.full((x.shape[0],), t, dtype=torch.long), **kwargs)


class QALoRATask:
    """`loop.TrainTask` for QALoRA: loss = MSE(student eps, teacher eps) at one sampling step
    (`qalora_step`, which also selects that step's activation step sizes)."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        calibration: TrajectoryBatch | None = None,
        step_lr: float = 1e-3,
    ):
        if not qalora_layers(student):
            raise ValueError("the student has no QALoRA layer (build it with build_qalora_student)")
        if step_lr < 0:
            raise ValueError(f"--step-lr must be >= 0, got {step_lr}")
        self.student = student
        self.model = OnDevice(student)
        self.teacher = OnDevice(teacher.requires_grad_(False).eval())
        self.step_lr = step_lr
        if calibration is not None:
            calibrate_activation_steps(self.model, calibration)
        uncalibrated = [
            n
            for n, layer in qalora_layers(student)
            if layer.act_quant is not None and not bool(layer.act_quant.initialized.all())
        ]
        if uncalibrated:
            raise ValueError(
                f"activation step sizes of {uncalibrated[:3]} are not calibrated: pass a calibration "
                "trajectory with one latent per sampling step"
            )

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def optimizer_groups(self, lr: float) -> list[dict]:
        """AdamW groups: the LoRA factors at `lr`; each step-size tensor at step_lr * its mean size."""
        groups = trainable_parameters(self.student)
        out = [{"params": groups["lora"], "lr": lr}]
        for p in groups["weight_steps"] + groups["act_steps"]:
            out.append({"params": [p], "lr": self.step_lr * float(p.detach().abs().mean())})
        return out

    def compute_loss(
        self, model: torch.nn.Module, batch: QALoRABatch, ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = qalora_step(model, self.teacher, batch.trajectory, batch.step_index)
        return loss, {"sampling_step": float(batch.step_index)}

    def after_step(self, ctx: Any) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything that changes in training is a trainable parameter (saved by the loop) except the
        activation quantizers' calibration flags, saved here."""
        flags = {
            n: layer.act_quant.initialized.cpu().clone()
            for n, layer in qalora_layers(self.student)
            if layer.act_quant is not None
        }
        return {"act_initialized": flags}

    def load_state_dict(self, state: dict) -> None:
        flags = state.get("act_initialized", {})
        for name, layer in qalora_layers(self.student):
            if layer.act_quant is not None:
                if name not in flags:
                    raise RuntimeError(
                        f"checkpoint has no activation quantizer state for layer {name!r} "
                        "(different --act-bits or --keep?)"
                    )
                layer.act_quant.initialized.copy_(flags[name])


def quantized_model_host(
    model,
    exported_unet: torch.nn.Module,
    fmt: str,
    group_size: int,
    keep: str | Sequence[str] | None,
    float_unet: torch.nn.Module,
):
    """A standalone MODEL (ModelHost) holding the exported quantized UNet, with the QuantizeReport
    `write_quantized_checkpoint` reads (kept layers from `float_unet`, the teacher)."""
    from dataclasses import replace

    from ..quantize import QuantizeReport, normalize_format, quantized_layers, split_layers, weight_bytes
    from ..runtime.quantized import QUANT_OPTION

    fmt = normalize_format(fmt)
    todo, kept, patterns = split_layers(float_unet, keep)
    layers = quantized_layers(exported_unet)
    report = QuantizeReport(
        fmt,
        group_size if fmt == "int4" else None,
        patterns,
        quantized=[n for n, _ in layers],
        kept=kept,
        bytes_before=weight_bytes(m for _, m in todo),
        bytes_after=weight_bytes(m for _, m in layers),
    )
    clone = replace(model.clone(), unet=exported_unet, patches=[])
    clone.model_options[QUANT_OPTION] = report
    return clone
