"""The accelerator nodes inside a real ComfyUI (skipped without COMFYUI_PATH): the SamplerCustom route
equals the one-node route, and ComfyUI's built-in routes differ from the exact ones (their latent PSNR
is the figure benchmarks/bench_accelerator_routes.py prints)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from comfyui_server import comfyui_checkout, run_checks, sd15_unet_base

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("comfyui_accelerator")
    sd15_unet_base(base, REPO)
    return run_checks(CHECKOUT, REPO / "tests" / "comfyui_accelerator_checks.py", base)


def test_sampler_custom_route_equals_the_one_node_route_in_comfyui(checks):
    assert checks["custom_route"]["max_diff"] == {"hyper_sd": 0.0, "lightning": 0.0, "tcd": 0.0, "dmd2": 0.0}


def test_builtin_routes_only_approximate_the_exact_schedules(checks):
    rows = checks["routes"]["rows"]
    assert len(rows) == 9
    for row in rows:
        # a different timestep grid gives a different latent, but the same picture's neighbourhood
        assert 0 < row["psnr_db"] < math.inf, row


def test_lcm_sampling_mode_snapping_an_off_grid_schedule_is_said(checks):
    """ComfyUI's "lcm" mode reads DMD2's 749 / 249 as grid neighbours: said once; LCM's own grid is silent."""
    import re

    (said,) = checks["snapped_warning"]["said"]
    read = re.search(r"timesteps \[999, 749, 499, 249\] reach the UNet as \[(\d+), (\d+), (\d+), (\d+)\]", said)
    assert read is not None, said
    snapped = [int(t) for t in read.groups()]
    assert snapped[0] == 999 and snapped[2] == 499 and all((t + 1) % 20 == 0 for t in snapped), snapped
