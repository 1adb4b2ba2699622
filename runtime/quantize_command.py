"""`python -m lcm_accel quantize`: merge LoRAs into a checkpoint's UNet, quantize it, save the file.

    python -m lcm_accel quantize --base sd15.safetensors --lora lcm-lora-sdv1-5.safetensors:1.0 \\
        --format int8 --out sd15-lcm-int8.safetensors

The output is a single-file checkpoint (text encoder and VAE copied from --base) that the standalone
checkpoint loader (CheckpointLoaderSimple headless) reads back without the float UNet.
"""

from __future__ import annotations

import argparse


def add_quantize_command(sub: argparse._SubParsersAction) -> None:
    from ..quantize.formats import DEFAULT_GROUP_SIZE

    cmd = sub.add_parser("quantize", help="merge LoRAs into a checkpoint's UNet and save it quantized")
    cmd.add_argument("--base", required=True, help="single-file SD1.5 / SDXL checkpoint (.safetensors)")
    cmd.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE:WEIGHT",
        help="LoRA file and weight to merge first (repeatable; weight defaults to 1.0)",
    )
    cmd.add_argument(
        "--format",
        required=True,
        choices=["int8", "fp8_e4m3fn", "int4", "fp8", "fp8_e4m3"],
        metavar="{int8,fp8_e4m3fn,int4}",
        help="weight format (fp8 and fp8_e4m3 are aliases of fp8_e4m3fn)",
    )
    cmd.add_argument(
        "--keep",
        default="default",
        help="comma-separated layer-name globs kept in high precision ('default': conv_in, conv_out, time_embedding)",
    )
    cmd.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, help="int4 group size (even)")
    cmd.add_argument("--out", required=True, help="output .safetensors file")


def run_quantize_command(args: argparse.Namespace) -> int:
    import sys

    from .checkpoints import load_checkpoint
    from .lora_files import load_lora_args
    from .lora_state import add_loras
    from .quantized import QUANT_OPTION, quantize_model, write_quantized_checkpoint

    try:
        model, _, _ = load_checkpoint(args.base)
        loras = load_lora_args(args.lora)
        if loras:
            model = add_loras(model, loras)
        quantized = quantize_model(model, args.format, args.keep, args.group_size)
        out = write_quantized_checkpoint(args.out, quantized, args.base)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(quantized.model_options[QUANT_OPTION].summary())
    print(f"wrote {out}")
    return 0
