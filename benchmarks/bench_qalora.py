"""QALoRA fine-tune on the tiny SD1.5 checkpoint: image PSNR against the fp32 model, W8 and W4, before and after.

    python benchmarks/bench_qalora.py            # 150 fine-tune steps per format (a few minutes on 2 cores)
    python benchmarks/bench_qalora.py --quick    # 60 steps

Teacher = the fp32 UNet of the fixtures' tiny SD1.5 checkpoint (loaded through the standalone loader).
For each format: the plain merge-then-quantize model (`export_qalora` of the untrained student, i.e.
max-abs step sizes, no LoRA) and the QALoRA-fine-tuned one, both exported WEIGHT-ONLY (activations in
fp32: what a `train qalora` checkpoint gives), sample 4-step LCM on fixed seeds and prompts; PSNR of
the decoded images (tiny VAE, [0, 1]) and of the final latents against the fp32 model's, plus the
held-out distillation MSE. The fine-tune runs the trainer's loop (`QALoRATask`, act_bits=None to match
the weight-only export) on other seeds and prompts. PASS when every format's image PSNR rises by at least
MIN_GAIN_DB (0.25 dB: our threshold for "measurably"; the seed-to-seed spread has not been measured).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

FORMATS = {"int8": dict(lr=3e-4, step_lr=1e-4), "int4": dict(lr=3e-3, step_lr=1e-3)}
TRAIN_PROMPTS = ["a photo of a dog", "a car on a road", "a house in the woods", "portrait of a woman",
                 "a man reading", "a bowl of soup"]
EVAL_PROMPTS = ["a red house", "a blue bird", "a green tree", "a cat on a sofa"]
STEPS, SIDE = 4, 8
MIN_GAIN_DB = 0.25  # our threshold for "measurably" (seed-to-seed spread not measured yet)


def _psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    return float(10 * torch.log10(peak ** 2 / ((a - b) ** 2).mean()))


def _sample(unet, cond: torch.Tensor, acp) -> torch.Tensor:
    """4-step LCM from fixed seeds, one prompt per seed; final latents."""
    from lcm_accel.lcm_scheduler import lcm_timesteps, sample_lcm_vp

    timesteps = lcm_timesteps(STEPS, 50)
    out = []
    for i in range(cond.shape[0]):
        g = torch.Generator().manual_seed(10_000 + i)
        x = torch.randn(1, 4, SIDE, SIDE, generator=g)
        out.append(sample_lcm_vp(lambda x_t, t, **kw: unet(x_t, t, **kw).sample, x, timesteps, acp,
                                 extra_args={"encoder_hidden_states": cond[i:i + 1]}, disable=True, generator=g))
    return torch.cat(out)


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return ((vae.vae.decode(latents / vae.scaling_factor).sample + 1) / 2).clamp(0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 fine-tune steps instead of 150")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    steps = args.steps or (60 if args.quick else 150)

    from lcm_accel.fixtures import shared_models_root
    from lcm_accel.hosts.standalone.checkpoint_loader import load_checkpoint
    from lcm_accel.lcm_scheduler import make_alphas_cumprod
    from lcm_accel.quantize.qalora import build_qalora_student, export_qalora, qalora_step
    from lcm_accel.training.conditioning import SDBatchPreparer
    from lcm_accel.training.loop import LoopConfig, train
    from lcm_accel.training.qalora_task import OnDevice, QALoRATask, TrajectoryBatches

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, clip, vae = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors")
    teacher = copy.deepcopy(model.unet).float().eval()
    prep = SDBatchPreparer(clip, None, None, SIDE * 8, "cpu")
    acp = make_alphas_cumprod("scaled_linear", 0.00085, 0.012, 1000)
    cond = prep.conditioning(EVAL_PROMPTS)["encoder_hidden_states"]
    held_out = TrajectoryBatches(OnDevice(teacher), prep.conditioning, EVAL_PROMPTS, STEPS, (4, 4, SIDE, SIDE),
                                 seed=777).trajectory(0)
    with torch.no_grad():
        ref_latents = _sample(teacher, cond, acp)
        ref_images = _decode(vae, ref_latents)

    def measure(unet) -> tuple[float, float, float]:
        with torch.no_grad():
            latents = _sample(unet, cond, acp)
            mse = sum(float(qalora_step(unet, teacher, held_out, i)) for i in range(STEPS)) / STEPS
            return (_psnr(_decode(vae, latents), ref_images, 1.0),
                    _psnr(latents, ref_latents, float(ref_latents.abs().max())), mse)

    print(f"tiny SD1.5 UNet ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M params), {STEPS}-step LCM, "
          f"{len(EVAL_PROMPTS)} fixed seeds/prompts, weight-only export (fp32 activations); fine-tune: {steps} steps, "
          f"rank {args.rank}, batch 2")
    print(f"{'format':7} {'lr':>7} {'step_lr':>8} | {'img PSNR before':>15} {'after':>7} | {'lat PSNR before':>15} "
          f"{'after':>7} | {'eps MSE before':>14} {'after':>9} | {'train s':>7}")
    ok = True
    for fmt, lrs in FORMATS.items():
        torch.manual_seed(0)
        student = build_qalora_student(teacher, fmt, args.rank, STEPS, None)
        before = measure(export_qalora(student))
        batches = TrajectoryBatches(OnDevice(teacher), prep.conditioning, TRAIN_PROMPTS, STEPS, (2, 4, SIDE, SIDE),
                                    seed=0)
        task = QALoRATask(student, teacher, batches.trajectory(0), step_lr=lrs["step_lr"])
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            train(task, batches, LoopConfig(steps=steps, work_dir=work, lr=lrs["lr"], device="cpu", progress=False))
        seconds = time.perf_counter() - start
        after = measure(export_qalora(student))
        ok &= after[0] >= before[0] + MIN_GAIN_DB
        print(f"{fmt:7} {lrs['lr']:7.0e} {lrs['step_lr']:8.0e} | {before[0]:15.2f} {after[0]:7.2f} | {before[1]:15.2f} "
              f"{after[1]:7.2f} | {before[2]:14.3e} {after[2]:9.3e} | {seconds:7.1f}")
    print(f"PASS: the QALoRA fine-tune raises image PSNR by >= {MIN_GAIN_DB} dB for every format" if ok
          else f"FAIL: the fine-tune did not raise image PSNR by >= {MIN_GAIN_DB} dB for every format")
    print("(timings are noisy: other engineers share this machine's 2 cores)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
