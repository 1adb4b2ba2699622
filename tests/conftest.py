"""Test set-up: make sure `lcm_accel` is this checkout, not some other installed copy."""

from __future__ import annotations

from pathlib import Path

import pytest

import lcm_accel

REPO_ROOT = Path(__file__).resolve().parent.parent

if Path(lcm_accel.__file__).resolve().parent != REPO_ROOT:
    raise RuntimeError(
        f"`lcm_accel` is imported from {Path(lcm_accel.__file__).parent}, not from this checkout "
        f"({REPO_ROOT}). Run the README's test command here (it does `pip install -e .`)."
    )


@pytest.fixture
def one_thread():
    """One torch thread for the test (subprocess-heavy tests on a 2-core machine), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
