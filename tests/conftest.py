"""Test set-up: make sure `lcm_accel` is this checkout, not some other installed copy."""
from __future__ import annotations

from pathlib import Path

import lcm_accel

REPO_ROOT = Path(__file__).resolve().parent.parent

if Path(lcm_accel.__file__).resolve().parent != REPO_ROOT:
    raise RuntimeError(
        f"`lcm_accel` is imported from {Path(lcm_accel.__file__).parent}, not from this checkout "
        f"({REPO_ROOT}). Run the README's test command here (it does `pip install -e .`)."
    )
