"""How many processes a launcher started, and how to join them with accelerate.

Shared by the trainer (`training/distributed.py`) and the batch runner (`harness/batch.py`); it
imports neither. `accelerate launch --multi_gpu --num_processes N` (or `torchrun`) starts the
processes and sets WORLD_SIZE; accelerate's `PartialState` / `Accelerator` joins them into one
torch.distributed group. On a machine without CUDA accelerate only does that when told to run on
the CPU, so `state_kwargs` says so: without it each process would believe it is alone, do all of
the work and write the same files as the others. `check_world` refuses that situation outright.
"""

from __future__ import annotations

import os
from typing import Any


def launched_world_size() -> int:
    """How many processes the launcher (accelerate launch / torchrun) started: WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def state_kwargs(device: str | None) -> dict:
    """`cpu=` for accelerate's `Accelerator` / `PartialState`: True for --device cpu, and for several
    launched processes on a machine without CUDA (None / "auto": accelerate's choice otherwise)."""
    import torch

    if device == "cpu":
        return {"cpu": True}
    auto = device in (None, "auto")
    return {"cpu": auto and launched_world_size() > 1 and not torch.cuda.is_available()}


def check_world(state: Any) -> None:
    """Raise when the launcher started more processes than accelerate joined (see the module doc)."""
    launched = launched_world_size()
    if launched > int(state.num_processes):
        raise RuntimeError(
            f"{launched} processes were launched but accelerate joined {state.num_processes}: each would work "
            "alone and write the same files. On a machine without GPUs launch with `accelerate launch --multi_gpu "
            "--num_processes N ...` (or torchrun) and pass --device cpu"
        )
