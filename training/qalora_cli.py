"""`python -m lcm_accel train qalora ...`: merge LoRAs, QALoRA-fine-tune a low-bit UNet, save it quantized.

    python -m lcm_accel train qalora --base sd15.safetensors --lora lcm-lora-sdv1-5.safetensors:1.0 \\
        --format int4 --steps 800 --out sd15-lcm-int4-qalora.safetensors

The output is a quantized single-file checkpoint (`write_quantized_checkpoint`: text encoder and VAE
copied from --base) that CheckpointLoaderSimple / `python -m lcm_accel run` read back. It is
WEIGHT-ONLY: the learned activation step sizes shape the fine-tune (the student trains under A<bits>
fake quantization) but are not stored; the loaded model runs its activations in floating point.
Exit status as `train lcm-lora`: 0 written, 2 bad arguments or files, 130 interrupted (--resume DIR).
"""

from __future__ import annotations

import argparse

from .run_options import add_run_options, report_interrupted, work_dir_of


def add_qalora_command(methods: argparse._SubParsersAction) -> None:
    """Add the `qalora` method to `train`'s sub-commands."""
    from ..quantize.formats import DEFAULT_GROUP_SIZE

    p = methods.add_parser("qalora", help="QALoRA fine-tune of a low-bit UNet (EfficientDM), saved quantized")
    p.add_argument("--base", required=True, help="single-file SD1.5 / SDXL checkpoint (.safetensors)")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE:WEIGHT",
        help="LoRA file and weight merged into the UNet first (repeatable; weight defaults to 1.0)",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=("int8", "int4", "fp8_e4m3fn", "fp8", "fp8_e4m3"),
        metavar="{int8,int4,fp8_e4m3fn}",
        help="weight format (fp8 and fp8_e4m3 are aliases of fp8_e4m3fn)",
    )
    p.add_argument(
        "--act-bits",
        type=int,
        default=0,
        help="activation fake-quantization bits during the fine-tune (default 0: none, i.e. exactly the "
        "weight-only model that is exported); activation step sizes are not exported",
    )
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--keep", default="default", help="layer-name globs kept in high precision (as `quantize`)")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, help="int4 group size")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps (one sampling step of one trajectory each)")
    p.add_argument("--lcm-steps", type=int, default=4, help="LCM sampling steps of the teacher's trajectories")
    p.add_argument("--prompts", default=None, metavar="FILE", help="one prompt per line (default: a few built in)")
    p.add_argument("--batch", type=int, default=1, help="trajectories per batch (per process)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate (updates in quantization-step units)")
    p.add_argument(
        "--step-lr",
        type=float,
        default=1e-3,
        help="step-size learning rate, relative: a fraction of each step-size tensor's mean per update",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", required=True, help="the quantized checkpoint to write (.safetensors)")

    add_run_options(p)


def _check(args: argparse.Namespace) -> None:
    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out {args.out}: the checkpoint file name must end with .safetensors")
    if args.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {args.rank}")
    if args.act_bits and not 2 <= args.act_bits <= 16:
        raise ValueError(f"--act-bits must be 0 (none) or 2..16, got {args.act_bits}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.resolution < 8 or args.resolution % 8:
        raise ValueError(f"--resolution must be a positive multiple of 8, got {args.resolution}")


def run_qalora(args: argparse.Namespace) -> int:
    """Run `train qalora` (errors propagate to `cli.run_train_command`, which prints them)."""
    import torch

    from ..quantize import is_quantized
    from ..quantize.qalora import build_qalora_student, export_qalora
    from ..runtime.checkpoints import load_checkpoint
    from ..runtime.lora_files import load_lora_args
    from ..runtime.lora_state import activate_patches, add_loras
    from ..runtime.quantized import QUANT_OPTION, private_unet_copy, write_quantized_checkpoint
    from .conditioning import SDBatchPreparer
    from .distributed import scale_report
    from .loop import LoopConfig, make_accelerator, train
    from .qalora_task import OnDevice, QALoRATask, TrajectoryBatches, quantized_model_host, read_prompts

    _check(args)
    prompts = read_prompts(args.prompts)
    work_dir = work_dir_of(args)
    config = LoopConfig(
        steps=args.steps,
        work_dir=work_dir,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    model, clip, _ = load_checkpoint(args.base)
    if is_quantized(model.unet):
        raise ValueError(f"--base {args.base} is already quantized: fine-tune from the float checkpoint")
    if model.prediction_type != "epsilon":
        raise ValueError(
            f"--base {args.base}: QALoRA's teacher trajectories assume an epsilon model, "
            f"this one predicts {model.prediction_type}"
        )
    loras = load_lora_args(args.lora)
    if loras:
        model = add_loras(model, loras)
    activate_patches(model)  # the LoRAs merged into the (shared) float UNet
    teacher = private_unet_copy(model.unet, []).float().eval().requires_grad_(False)
    torch.manual_seed(args.seed)  # the LoRA A factors
    student = build_qalora_student(
        teacher, args.format, args.rank, args.lcm_steps, args.act_bits or None, args.keep, args.group_size
    )

    accelerator = make_accelerator(config)
    device = accelerator.device
    teacher.to(device)
    student.to(device)
    for encoder in clip.text_encoders:
        encoder.to(device)
    side = args.resolution // 8
    preparer = SDBatchPreparer(clip, None, None, args.resolution, device)
    batches = TrajectoryBatches(
        OnDevice(teacher),
        preparer.conditioning,
        prompts,
        args.lcm_steps,
        (args.batch, 4, side, side),
        args.seed,
        model.noise_schedule,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    task = QALoRATask(student, teacher, calibration=batches.trajectory(0), step_lr=args.step_lr)
    if accelerator.is_main_process:
        print(scale_report(args.batch, accelerator.num_processes, 1, args.lr, any_count=False), flush=True)
    result = train(task, batches, config, accelerator)
    if result.interrupted:
        return report_interrupted(accelerator, result, work_dir)
    if accelerator.is_main_process:
        exported = export_qalora(task.student.cpu())
        host = quantized_model_host(model, exported, args.format, args.group_size, args.keep, teacher.cpu())
        path = write_quantized_checkpoint(args.out, host, args.base)
        report = host.model_options[QUANT_OPTION]
        print(report.summary())
        print(
            f"wrote {path} (QALoRA {report.format}, rank {args.rank}, {result.steps_done} steps; weight-only: "
            f"activation step sizes are not stored); loss log in {work_dir}"
        )
    accelerator.wait_for_everyone()
    return 0
