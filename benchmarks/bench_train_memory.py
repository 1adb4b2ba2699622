"""Training cost of LoRA distillation against full-model distillation (issue 10): steps/s and peak
memory distilling an SD1.5-size UNet (random weights) at 512x512, side by side in one run.

    python benchmarks/bench_train_memory.py                          # CUDA, bf16 autocast, batch 1
    python benchmarks/bench_train_memory.py --gradient-checkpointing --batch 4 --modes lcd
    python benchmarks/bench_train_memory.py --device cpu --small     # smoke run: a small UNet, fp32

The claim checked: LoRA-enhanced guidance distillation (arXiv 2312.06899) reports about 50% less
memory than full-model distillation (full / LoRA ~ 2).

Model: UNet2DConditionModel with SD1.5's config (block_out_channels 320/640/1280/1280, 2 layers per
block, cross_attention_dim 768, attention_head_dim 8, 860M parameters), random weights; a batch of
4x64x64 latents (512 px) and (B, 77, 768) text embeddings, random, the same batch every step.
--small: 2 blocks of 32/64 channels, 4x16x16 latents, (B, 77, 64) embeddings, LoRA rank 8.

Per mode (lcd: the skipping-step LCD objective, teacher CFG at fixed w 7.5, EMA target; guidance:
guidance distillation at w 7.5), two variants, each the real `LCMDistillTask` stepped by the
trainer's own step (`loop._one_step`: accelerate autocast, backward, grad clipping at 1.0, AdamW,
zero_grad(set_to_none)), as `train lcm-lora` runs it:
- LoRA: one UNet carrying a peft LoRA (--rank, default 64) on the 278 layers LCM-LoRA trains;
  teacher = the same UNet with the adapter off; AdamW on the LoRA only; lcd target = EMA (--ema,
  0.95) of the LoRA weights, swapped in for the target pass. Under mixed precision the frozen base
  is stored in the autocast dtype and the LoRA in float32 (what `train lcm-lora` does).
- full: every UNet parameter trainable (float32 master weights), a separate frozen teacher copy
  (stored in the autocast dtype under mixed precision, like the LoRA's base), AdamW on all
  parameters; lcd target = EMA of the whole student (a third UNet, float32), swapped in the same way.
guidance mode uses no target network, so neither variant keeps an EMA there (--guidance-ema keeps
one anyway, as `train lcm-lora --mode guidance --ema` would). Per step: lcd = 2 teacher passes
(CFG) + 1 target pass (no grad) + student forward/backward; guidance = 2 teacher passes + student.

Measured per configuration, one configuration at a time, everything freed in between:
- steps/s over --steps steps after --warmup steps (the first builds AdamW's state), synchronised;
- peak MiB (CUDA): torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), from before
  the models are built to the end of the last step, so weights, teacher, EMA, optimizer state,
  gradients and activations are all in it ("setup MiB": allocated once everything is built);
- state MiB (both devices, counted, not measured): bytes of the models' weights + one gradient per
  trainable parameter + AdamW's state + the EMA copy; activations and allocator overhead excluded.
  On the CPU this is the only memory figure: process RSS is not separated per configuration.
Timings on a shared CPU are noisy; the CPU run is a smoke check of the code path, not a result.
Without CUDA, --device cuda exits with status 2; full-size runs on the CPU are refused (status 2).
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time

import torch

SD15 = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the rest: diffusers' defaults = SD1.5
SMALL = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
QUOTED_LORA_PARAMS = 67.5e6  # the LCM-LoRA report's SD1.5 figure, quoted in issue 10
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
W = 7.5


def build_unet(config: dict, device: torch.device, seed: int = 0):
    """A random-weight UNet2DConditionModel, built directly on `device` (fast init on a GPU)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with device:
        return UNet2DConditionModel(**config)


def sd15_lora_count(rank: int) -> tuple[int, int, int]:
    """(LoRA parameters, LoRA'd layers, UNet parameters) of `add_lora` on SD1.5, on the meta device."""
    from lcm_accel.training.student import add_lora

    unet = build_unet(SD15, torch.device("meta"))
    with torch.device("meta"):
        params = add_lora(unet, rank)
    base = sum(p.numel() for p in unet.parameters()) - sum(p.numel() for _, p in params)
    return sum(p.numel() for _, p in params), len(params) // 2, base


class FixedBatch:
    """The same random batch every step (a `loop.BatchSource`)."""

    def __init__(self, batch: dict):
        self.batch = batch

    def next_batch(self) -> dict:
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def random_batch(batch: int, latent: int, cross_dim: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 4, latent, latent, generator=g)
    cond = torch.randn(batch, 77, cross_dim, generator=g)
    uncond = torch.randn(batch, 77, cross_dim, generator=g) * 0.1
    return {
        "latents": latents.to(device),
        "cond": {"encoder_hidden_states": cond.to(device)},
        "uncond": {"encoder_hidden_states": uncond.to(device)},
    }


def state_bytes(modules: list, optimizer, task) -> int:
    """Weights and buffers of `modules` + one gradient per trainable parameter + optimizer state +
    EMA shadow; each storage once."""
    tensors = {}
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    grads = sum(p.numel() * p.element_size() for _, p in task.trainable_parameters())
    extra = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    if task.ema is not None:
        extra += list(task.ema.shadow.values())
    for t in extra:
        tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(tensors.values()) + grads


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(mode: str, variant: str, args, device: torch.device, unet_config: dict, latent: int) -> dict:
    """Build one configuration, step it, measure; nothing of it is referenced after the return."""
    from lcm_accel.lcm_scheduler.schedule import make_alphas_cumprod
    from lcm_accel.training.distill import DistillSettings, LCMDistillTask, unet_fn
    from lcm_accel.training.lcd import LCDSettings
    from lcm_accel.training.loop import LoopConfig, _one_step, make_accelerator
    from lcm_accel.training.student import add_lora, store_base_in

    on_cuda = device.type == "cuda"
    if on_cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    config = LoopConfig(
        steps=args.warmup + args.steps,
        work_dir="unused",
        mixed_precision=args.mixed_precision,
        device=device.type,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=False,
    )
    accelerator = make_accelerator(config)
    half = HALF.get(args.mixed_precision) if on_cuda else None  # frozen weights stored in half on CUDA, as the CLI does
    ema = args.ema if (mode == "lcd" or args.guidance_ema) and args.ema > 0 else None
    settings = DistillSettings(mode=mode, lcd=LCDSettings(w=W), ema_rate=ema)
    acp = make_alphas_cumprod().to(device)

    unet = build_unet(unet_config, device)
    if variant == "LoRA":
        torch.manual_seed(0)
        params = add_lora(unet, args.rank)
        if half is not None:
            store_base_in(unet, half)
        modules, teacher = [unet], None
    else:
        teacher_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        if half is not None:
            teacher_unet.to(half)
        unet.requires_grad_(True)
        params = list(unet.named_parameters())
        modules, teacher = [unet, teacher_unet], unet_fn(teacher_unet)
    task = LCMDistillTask(unet, params, acp, settings, teacher=teacher)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    model, optimizer = accelerator.prepare(unet, optimizer)
    batches = FixedBatch(random_batch(args.batch, latent, unet_config["cross_attention_dim"], device))
    generator = torch.Generator("cpu").manual_seed(0)
    setup = (torch.cuda.memory_allocated(device) - before) / 2**20 if on_cuda else float("nan")

    rows = [_one_step(task, model, optimizer, batches, generator, accelerator, config, i) for i in range(args.warmup)]
    sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        rows.append(_one_step(task, model, optimizer, batches, generator, accelerator, config, args.warmup + i))
    sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if on_cuda else float("nan")
    result = {
        "mode": mode,
        "variant": variant,
        "trainable": sum(p.numel() for _, p in params),
        "state": state_bytes(modules, optimizer, task) / 2**20,
        "setup": setup,
        "peak": peak,
        "steps_s": args.steps / seconds,
        "loss": rows[-1]["loss"],
        "ema": ema is not None,
    }
    accelerator.free_memory()  # drops the accelerator's references; the rest goes with this frame
    return result


def mib(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda if available",
    )
    parser.add_argument("--small", action="store_true", help="a small UNet and 16x16 latents: a CPU smoke run")
    parser.add_argument("--modes", default="lcd,guidance", help="comma-separated: lcd, guidance (default both)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 64; 8 with --small)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 3 with --small)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 with --small)")
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="accelerate autocast (default bf16 on CUDA, no on CPU)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--ema", type=float, default=0.95, help="EMA rate of the lcd target (0: no EMA)")
    parser.add_argument("--guidance-ema", action="store_true", help="keep an (unused) EMA in guidance mode too")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: benchmarks/bench_train_memory.py --device cuda: no CUDA device (torch.cuda.is_available() is "
            "False); run it on a CUDA machine, or pass --device cpu --small for a smoke run",
            file=sys.stderr,
        )
        return 2
    if device.type == "cpu" and not args.small:
        print("error: the SD1.5-size run is for CUDA; pass --small with --device cpu", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("lcd", "guidance") for m in modes):
        parser.error(f"--modes: lcd and/or guidance, got {args.modes!r}")
    args.mixed_precision = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    if device.type == "cpu" and args.mixed_precision == "fp16":
        parser.error("--mixed-precision fp16 needs CUDA (bf16 autocast runs on the CPU)")
    args.rank = args.rank or (8 if args.small else 64)
    args.steps = args.steps or (3 if args.small else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 3)
    torch.set_num_threads(args.threads)
    from lcm_accel.training.student import require_training_packages

    require_training_packages()
    unet_config, latent = (SMALL, 16) if args.small else (SD15, 64)

    results = [
        run_config(mode, variant, args, device, unet_config, latent) for mode in modes for variant in ("LoRA", "full")
    ]

    where = (
        f"{torch.cuda.get_device_name(device)}"
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    size = (
        "small UNet (32/64 channels), 16x16 latents (128 px)"
        if args.small
        else "SD1.5-size UNet (random weights), 64x64 latents (512 px)"
    )
    print(
        f"{size}, batch {args.batch}, {where}, mixed precision {args.mixed_precision}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, LoRA rank {args.rank}, "
        f"w {W}, {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{'mode':9} {'variant':7} {'trainable':>11} {'EMA':>4} {'state MiB':>10} {'setup MiB':>10} "
        f"{'peak MiB':>10} {'steps/s':>8} {'last loss':>10}"
    )
    for r in results:
        print(
            f"{r['mode']:9} {r['variant']:7} {r['trainable'] / 1e6:10.2f}M {'yes' if r['ema'] else 'no':>4} "
            f"{r['state']:10.1f} {mib(r['setup']):>10} {mib(r['peak']):>10} {r['steps_s']:8.3f} {r['loss']:10.4g}"
        )
    print("full / LoRA (memory > 1: LoRA saves memory; steps/s < 1: full is slower):")
    print(f"{'mode':9} {'state':>8} {'peak':>8} {'steps/s':>8}   LoRA's memory cut (peak; state if no peak)")
    for mode in modes:
        lora, full = (next(r for r in results if r["mode"] == mode and r["variant"] == v) for v in ("LoRA", "full"))
        peak = f"{full['peak'] / lora['peak']:.2f}" if device.type == "cuda" else "n/a"
        cut = 1 - (lora["peak"] / full["peak"] if device.type == "cuda" else lora["state"] / full["state"])
        print(
            f"{mode:9} {full['state'] / lora['state']:8.2f} {peak:>8} {full['steps_s'] / lora['steps_s']:8.2f}"
            f"   {100 * cut:.0f}% (claimed: ~50%)"
        )
    if device.type == "cpu":
        print(
            "peak MiB: not measured on the CPU (state MiB is counted from the tensors); CPU timings are a smoke check"
        )

    lora_count, layers, base = sd15_lora_count(64)
    print(
        f"LoRA rank 64 on SD1.5 ({layers} layers: attention q/k/v/out, feed-forward, proj_in/out, resnet conv1/conv2/"
        f"shortcut/time_emb_proj, down/up-sampler convs): {lora_count / 1e6:.2f}M trainable parameters "
        f"(UNet: {base / 1e6:.2f}M); issue 10 quotes {QUOTED_LORA_PARAMS / 1e6:.1f}M "
        f"({100 * (lora_count / QUOTED_LORA_PARAMS - 1):+.1f}%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
