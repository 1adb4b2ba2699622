"""`python -m lcm_accel train lcm-lora ...`; several processes (README, "Training on several processes"):

    accelerate launch --multi_gpu --num_processes N -m lcm_accel train lcm-lora ... [--device cpu]

`--batch` is per process: the effective batch is --batch x processes x --grad-accum (printed at start).

Exit status: 0 done (LoRA written), 2 bad arguments or files, 130 interrupted (checkpoint saved;
rerun with `--resume WORK_DIR`).
"""

from __future__ import annotations

import argparse
import copy
import sys

from .qalora_cli import add_qalora_command, run_qalora
from .run_options import add_run_options, report_interrupted, work_dir_of

EXIT_INVALID = 2


def add_train_command(sub: argparse._SubParsersAction) -> None:
    """Add `train` (with its `lcm-lora` method) to the top-level parser's sub-commands."""
    train = sub.add_parser("train", help="distil an LCM-LoRA from a checkpoint (needs the [train] extra)")
    methods = train.add_subparsers(dest="method", required=True)
    p = methods.add_parser("lcm-lora", help="latent consistency distillation into a LoRA (+ guidance / reward)")
    p.add_argument("--base", required=True, help="checkpoint file or diffusers folder (as the checkpoint loader takes)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="folder of image + caption pairs (img.png + img.txt)")
    data.add_argument(
        "--synthetic-prompts",
        metavar="FILE",
        help="data-free: one prompt per line; latents are the teacher's own samples",
    )
    p.add_argument("--out", required=True, help="the LoRA file to write (.safetensors)")
    p.add_argument("--format", choices=("kohya", "peft"), default="kohya", help="LoRA key layout (default kohya)")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4, help="batch size per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--w-min", type=float, default=5.0)
    p.add_argument("--w-max", type=float, default=15.0)
    p.add_argument("--w", type=float, default=None, help="fixed guidance scale (overrides --w-min/--w-max)")
    p.add_argument("--loss", choices=("huber", "l2"), default="huber")
    p.add_argument("--huber-c", type=float, default=0.001)
    p.add_argument("--num-ddim-steps", type=int, default=50, help="skipping-step teacher solver grid (k = 1000 / this)")
    p.add_argument("--mode", choices=("lcd", "guidance", "lcd+guidance"), default="lcd")
    p.add_argument("--guidance-weight", type=float, default=1.0, help="weight of the guidance loss in lcd+guidance")
    p.add_argument("--reward", default=None, help="reward name (colorfulness, saturation, hpsv2, imagereward)")
    p.add_argument(
        "--reward-model",
        default=None,
        metavar="FILE",
        help="weights of a model-backed reward (HPS_v2_compressed.pt, ImageReward.pt)",
    )
    p.add_argument(
        "--reward-tokenizer",
        default=None,
        metavar="DIR",
        help="the reward model's tokenizer files (hpsv2: CLIP vocab.json + merges.txt; imagereward: "
        "bert-base-uncased vocab.txt); default: the folder of --reward-model",
    )
    p.add_argument("--reward-scale", type=float, default=0.0, help="beta in L_LCD - beta * R")
    p.add_argument("--latent-proxy", action="store_true", help="train and use a latent proxy reward model")
    p.add_argument("--ema", type=float, default=None, metavar="RATE", help="EMA target network with this rate")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--synthetic-w", type=float, default=7.5, help="guidance of the teacher's data-free samples")
    p.add_argument("--synthetic-steps", type=int, default=20, help="DDIM steps of the teacher's data-free samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=100)
    add_run_options(p)
    add_qalora_command(methods)  # `train qalora`: QALoRA fine-tune of a low-bit UNet


def run_train_command(args: argparse.Namespace) -> int:
    """Run `train lcm-lora`; one `error: ...` line on stderr for a bad argument or file."""
    try:
        if args.method == "qalora":
            return run_qalora(args)
        return _run_lcm_lora(args)
    except (ValueError, FileNotFoundError, ImportError, NotImplementedError, RuntimeError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID


def _settings(args: argparse.Namespace, prediction_type: str):
    from .distill import DistillSettings
    from .lcd import LCDSettings

    if args.reward is None and (args.reward_scale or args.latent_proxy):
        raise ValueError("--reward-scale / --latent-proxy need --reward NAME")
    if args.reward is not None and args.reward_scale <= 0:
        raise ValueError("--reward needs a positive --reward-scale BETA")
    lcd = LCDSettings(args.num_ddim_steps, args.w_min, args.w_max, args.w, args.loss, args.huber_c, prediction_type)
    return DistillSettings(
        args.mode, lcd, args.guidance_weight, args.reward_scale, args.latent_proxy, ema_rate=args.ema
    )


def _run_lcm_lora(args: argparse.Namespace) -> int:
    from .student import require_training_packages

    require_training_packages()
    import torch

    from ..lcm_scheduler.schedule import make_alphas_cumprod
    from ..runtime.checkpoints import load_checkpoint
    from .conditioning import SDBatchPreparer
    from .data import ImageCaptionFolder, PromptList, ShuffledBatches
    from .distill import LCMDistillTask
    from .distributed import scale_report
    from .export import export_lora
    from .loop import LoopConfig, make_accelerator, train
    from .rewards import load_reward
    from .student import add_lora, store_base_in

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out {args.out}: the LoRA file name must end with .safetensors")
    work_dir = work_dir_of(args)
    config = LoopConfig(
        steps=args.steps,
        work_dir=work_dir,
        lr=args.lr,
        grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision,
        device=args.device,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress,
    )
    if args.reward is None and (args.reward_model or args.reward_tokenizer):
        raise ValueError("--reward-model / --reward-tokenizer need --reward NAME")
    reward = load_reward(args.reward, args.reward_model, args.reward_tokenizer) if args.reward else None
    dataset = ImageCaptionFolder(args.data, args.resolution) if args.data else PromptList(args.synthetic_prompts)
    model, clip, vae = load_checkpoint(args.base)
    settings = _settings(args, model.prediction_type)
    accelerator = make_accelerator(config)
    device = accelerator.device

    unet = copy.deepcopy(model.unet)  # the loader's cached UNet stays untouched
    torch.manual_seed(args.seed)
    lora_params = add_lora(unet, args.rank)
    if args.mixed_precision != "no" and device.type == "cuda":
        store_base_in(unet, torch.float16 if args.mixed_precision == "fp16" else torch.bfloat16)
    unet.to(device)
    for encoder in clip.text_encoders:
        encoder.to(device)
    vae.vae.to(device)
    if isinstance(reward, torch.nn.Module):
        reward.to(device)
    acp = make_alphas_cumprod(
        **{k: model.noise_schedule[k] for k in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")}
    )
    preparer = SDBatchPreparer(
        clip, vae, acp, args.resolution, device, args.synthetic_w, args.synthetic_steps, model.prediction_type
    )
    task = LCMDistillTask(unet, lora_params, acp.to(device), settings, preparer, reward, preparer.decode)
    batches = ShuffledBatches(dataset, args.batch, args.seed, accelerator.process_index, accelerator.num_processes)
    if accelerator.is_main_process:
        print(scale_report(args.batch, accelerator.num_processes, args.grad_accum, args.lr), flush=True)
    result = train(task, batches, config, accelerator)
    if result.interrupted:
        return report_interrupted(accelerator, result, work_dir)
    if accelerator.is_main_process:
        path = export_lora(
            accelerator.unwrap_model(unet), args.out, settings, model.family, result.steps_done, args.base, args.format
        )
        print(f"wrote {path} ({args.format}, rank {args.rank}, {result.steps_done} steps); loss log in {work_dir}")
    accelerator.wait_for_everyone()
    return 0
