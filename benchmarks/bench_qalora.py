"""QALoRA fine-tune on a trained tiny UNet: image PSNR against the fp32 model, W8 and W4, before and after.

    python benchmarks/bench_qalora.py            # teacher 1000 steps, 300 fine-tune steps per format (~4 min, 1 core)
    python benchmarks/bench_qalora.py --quick    # teacher 600 steps, 150 fine-tune steps

The model: the class-conditional toy teacher of `bench_train_toy.py` (a tiny diffusers UNet trained here on
4x8x8 shape "latents"; channels 0-2 decode to RGB, `to_rgb`). A TRAINED model, on purpose: on the fixtures'
random-weight tiny SD1.5 UNet the image PSNR of 4-step samples swings by about +-1 dB between fine-tune
checkpoints whose held-out eps MSE differs by under 10%, so a W8 gain (a few % of MSE there) cannot be seen.

For each format: the plain merge-then-quantize model (`export_qalora` of the untrained student: max-abs step
sizes, no LoRA) and the QALoRA-fine-tuned one, both exported WEIGHT-ONLY (what `train qalora` writes), sample
4-step LCM on fixed seeds and labels. Reported against the fp32 teacher's samples: image PSNR (decoded, [0, 1],
over all samples), the mean of the per-sample image PSNRs (less sensitive to one sample that changes mode),
and the held-out distillation MSE (eps, on trajectories of other seeds). The fine-tune is the trainer's loop
with `QALoRATask` (act_bits=None, matching the weight-only export) on the teacher's own trajectories (data-free).
PASS when every format's image PSNR rises by at least MIN_GAIN_DB.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from bench_train_toy import ACP, CLASSES, embed, to_rgb, train_teacher

FORMATS = {"int8": dict(lr=1e-3, step_lr=0.0), "int4": dict(lr=3e-3, step_lr=1e-3)}
STEPS, SIDE, SAMPLES, BATCH, RANK = 4, 8, 64, 8, 32
MIN_GAIN_DB = 1.0  # "measurably": well above the checkpoint-to-checkpoint spread seen on this model (< 0.5 dB at W8)


def conditioning(labels: list[str]) -> dict:
    """The toy's 'text encoder': class names are their indices."""
    return embed(torch.tensor([int(label) for label in labels]))


def labels(n: int) -> list[str]:
    return [str(i % CLASSES) for i in range(n)]


def psnr(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(PSNR over everything, mean per-sample PSNR) for values in [0, 1]."""
    per_sample = ((a - b) ** 2).flatten(1).mean(dim=1)
    return float(10 * torch.log10(1 / per_sample.mean())), float((10 * torch.log10(1 / per_sample)).mean())


def lcm_images(unet: torch.nn.Module) -> torch.Tensor:
    """4-step LCM from fixed seeds (one per sample), decoded by the toy decoder."""
    from lcm_accel.lcm_scheduler import lcm_timesteps, sample_lcm_vp

    g = torch.Generator().manual_seed(10_000)
    x = torch.randn(SAMPLES, 4, SIDE, SIDE, generator=g)
    cond = conditioning(labels(SAMPLES))
    latents = sample_lcm_vp(
        lambda x_t, t, **kw: unet(x_t, t, **kw).sample,
        x,
        lcm_timesteps(STEPS, 50),
        ACP,
        extra_args=cond,
        disable=True,
        generator=g,
    )
    return to_rgb(latents)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter teacher training and fine-tune")
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps per format (default 300, quick 150)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    steps = args.steps or (150 if args.quick else 300)
    teacher_steps = 600 if args.quick else 1000
    torch.set_num_threads(args.threads)

    from lcm_accel.quantize.qalora import build_qalora_student, export_qalora, qalora_step
    from lcm_accel.training.loop import LoopConfig, train
    from lcm_accel.training.qalora_task import OnDevice, QALoRATask, TrajectoryBatches

    start = time.perf_counter()
    teacher = train_teacher(teacher_steps)
    print(
        f"toy teacher: {sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M params, {teacher_steps} training "
        f"steps ({time.perf_counter() - start:.0f} s)"
    )
    held_out = [
        TrajectoryBatches(OnDevice(teacher), conditioning, labels(8), STEPS, (8, 4, SIDE, SIDE), seed=777).trajectory(i)
        for i in range(2)
    ]
    with torch.no_grad():
        reference = lcm_images(teacher)

    def measure(unet) -> tuple[float, float, float]:
        with torch.no_grad():
            mse = sum(float(qalora_step(unet, teacher, h, i)) for h in held_out for i in range(STEPS))
            return (*psnr(lcm_images(unet), reference), mse / (len(held_out) * STEPS))

    print(
        f"{STEPS}-step LCM, {SAMPLES} fixed seeds, weight-only export (fp32 activations); fine-tune: {steps} steps, "
        f"rank {RANK}, batch {BATCH} trajectories, threads {args.threads}"
    )
    print(
        f"{'format':7} {'lr':>7} {'step_lr':>8} | {'img PSNR before':>15} {'after':>7} | {'per-sample before':>17} "
        f"{'after':>7} | {'eps MSE before':>14} {'after':>9} | {'train s':>7}"
    )
    ok = True
    for fmt, lrs in FORMATS.items():
        torch.manual_seed(0)
        student = build_qalora_student(teacher, fmt, RANK, STEPS, None)
        before = measure(export_qalora(student))
        batches = TrajectoryBatches(OnDevice(teacher), conditioning, labels(12), STEPS, (BATCH, 4, SIDE, SIDE), seed=0)
        task = QALoRATask(student, teacher, batches.trajectory(0), step_lr=lrs["step_lr"])
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            train(task, batches, LoopConfig(steps=steps, work_dir=work, lr=lrs["lr"], device="cpu", progress=False))
        seconds = time.perf_counter() - began
        after = measure(export_qalora(student))
        ok &= after[0] >= before[0] + MIN_GAIN_DB
        print(
            f"{fmt:7} {lrs['lr']:7.0e} {lrs['step_lr']:8.0e} | {before[0]:15.2f} {after[0]:7.2f} | {before[1]:17.2f} "
            f"{after[1]:7.2f} | {before[2]:14.3e} {after[2]:9.3e} | {seconds:7.1f}"
        )
    print(
        f"PASS: the QALoRA fine-tune raises image PSNR by >= {MIN_GAIN_DB} dB for every format"
        if ok
        else f"FAIL: the fine-tune did not raise image PSNR by >= {MIN_GAIN_DB} dB for every format"
    )
    print(f"total {time.perf_counter() - start:.0f} s (timings are noisy: other engineers share this machine's cores)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
