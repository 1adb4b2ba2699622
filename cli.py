"""Command-line dispatcher: `demo`, and the harness's `run` / `validate` / `nodes`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen sub-command; returns the process exit status."""
    from .harness.cli_commands import add_harness_commands, run_harness_command

    parser = argparse.ArgumentParser(prog="python -m lcm_accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo and write a PNG")
    demo.add_argument("--out", default="output", help="folder for the PNG (default: output)")
    demo.add_argument("--seed", type=int, default=0)
    add_harness_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        path = run_demo(out_dir=args.out, seed=args.seed)
        print(f"wrote {path}")
        return 0
    return run_harness_command(args)


if __name__ == "__main__":
    sys.exit(main())
