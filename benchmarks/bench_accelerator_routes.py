"""How far ComfyUI's built-in routes for the accelerator families are from the families' exact
schedules: the latent PSNR of KSampler(sampler, scheduler) against LCMAcceleratorKSampler on the same
UNet, seed and conditioning (tests/comfyui_accelerator_checks.py ROUTES).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_accelerator_routes.py   # in real ComfyUI
    python benchmarks/bench_accelerator_routes.py                                 # headless host

In real ComfyUI the built-in side is ComfyUI's own sampler and scheduler code; headless it is the
standalone host's copy of them (ddim_uniform is not there: those rows are left out). The UNet is the
tiny random SD1.5 of the tests (64 channels' worth of arithmetic, no trained content), so the figures
measure how far the timestep grids and samplers move a latent, not picture quality.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from comfyui_accelerator_checks import ROUTES, compare_routes  # noqa: E402


def comfyui_rows(checkout: Path) -> list[dict]:
    from comfyui_server import run_checks, sd15_unet_base

    with tempfile.TemporaryDirectory() as base:
        sd15_unet_base(Path(base), REPO)
        return run_checks(checkout, REPO / "tests" / "comfyui_accelerator_checks.py", Path(base))["routes"]["rows"]


def headless_rows() -> list[dict]:
    import torch

    from lcm_accel.fixtures.comfyui_models import sd15_unet
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
    from lcm_accel.hosts.standalone.names import SCHEDULER_NAMES
    from lcm_accel.nodes import NODE_CLASS_MAPPINGS as PACK
    from lcm_accel.runtime.model_types import ModelHost

    torch.manual_seed(0)
    unet = sd15_unet().eval()
    model = ModelHost(unet=unet, family="sd15")
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 32, 32)}
    node = {name: cls() for name, cls in {**CORE, **PACK}.items()}
    routes = [route for route in ROUTES if route[4] in SCHEDULER_NAMES]
    return compare_routes(node, model, positive, negative, latent, routes=routes)


def main() -> int:
    checkout = os.environ.get("COMFYUI_PATH")
    rows = comfyui_rows(Path(checkout)) if checkout else headless_rows()
    where = f"ComfyUI at {checkout}" if checkout else "the standalone host (headless)"
    print(f"built-in routes vs the exact family routes, {where}; latent PSNR (higher = closer)")
    print(f"{'family':<12} {'steps':>5}  {'built-in route':<22} {'PSNR dB':>8}")
    for row in rows:
        print(f"{row['family']:<12} {row['steps']:>5}  {row['builtin']:<22} {row['psnr_db']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
