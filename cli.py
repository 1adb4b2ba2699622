"""Command-line dispatcher: `demo`, `train`, `quantize`, and the harness's `run` / `batch` / `validate` / `nodes` / `migrate`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen sub-command; returns the process exit status."""
    from .harness.cli_commands import add_harness_commands, run_harness_command

    parser = argparse.ArgumentParser(prog="python -m lcm_accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the LCM-LoRA workflow headless and write a PNG")
    demo.add_argument(
        "--models",
        default=None,
        help="ComfyUI models folder with real weights (default: the embedded model the project trains)",
    )
    demo.add_argument("--out", default="output", help="folder for the PNG (default: output)")
    demo.add_argument("--workflow", default=None, help="another workflow file to run instead")
    demo.add_argument("--prompt", default=None, help="the prompt of the embedded model's demo (no --models)")
    add_harness_commands(sub)
    from .training.cli import add_train_command, run_train_command

    add_train_command(sub)
    from .runtime.quantize_command import add_quantize_command, run_quantize_command

    add_quantize_command(sub)
    args = parser.parse_args(argv)
    if args.command == "quantize":
        return run_quantize_command(args)
    if args.command == "train":
        return run_train_command(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.models, args.out, args.workflow, args.prompt, main)
    return run_harness_command(args)


if __name__ == "__main__":
    sys.exit(main())
