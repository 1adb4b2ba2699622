"""What every `train` method shares: the run options (work dir, resume, device, progress), the work
folder they name, and the message of an interrupted run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INTERRUPTED = 130


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options every training method shares: work dir, resume, device, progress, tracebacks."""
    p.add_argument("--work-dir", default=None, help="checkpoints and loss log (default: OUT.work)")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the run whose work dir is DIR")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: accelerate's choice (the GPU of each process under accelerate launch)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def report_interrupted(accelerator, result, work_dir: Path) -> int:
    """Say (once, on the main process) how to continue an interrupted run; the exit status."""
    if accelerator.is_main_process:
        print(
            f"interrupted after step {result.steps_done}; checkpoint saved. Continue with: --resume {work_dir}",
            file=sys.stderr,
        )
    return EXIT_INTERRUPTED


def work_dir_of(args: argparse.Namespace) -> Path:
    if args.resume:
        work = Path(args.resume)
        if not (work / "checkpoint" / "state.pt").is_file():
            raise FileNotFoundError(f"--resume {work}: no checkpoint there (expected {work / 'checkpoint'})")
        return work
    work = Path(args.work_dir or (args.out + ".work"))
    if (work / "checkpoint").exists():
        raise ValueError(
            f"work dir {work} already holds a checkpoint: pass --resume {work} to continue it, or another --work-dir"
        )
    return work
