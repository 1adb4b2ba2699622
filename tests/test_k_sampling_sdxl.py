"""A few sampler x scheduler pairs on an SDXL UNet against ComfyUI 0.3.64 (skipped unless
COMFYUI_PATH names a checkout; LCM_ACCEL_COMFYUI_FAMILIES must include sdxl): KSampler euler/normal,
dpmpp_2m/karras, dpmpp_sde/karras (Brownian-tree noise) and uni_pc/simple on a Segmind-Vega UNet
(SDXL's widths, ComfyUI detects it as SDXL), loaded once by each host through UNETLoader, with
SDXL conditioning (a 2048-wide context and a pooled output). tests/test_k_sampling.py compares every
pair on SD1.5's table with a toy denoiser; this checks the SDXL model path (latent scaling, size
ids, the full UNet) under the same samplers.

The UNet has 849M parameters: 3 steps on an 8x8 latent keep it to about a minute per host on a CPU.

Tolerance: 1e-4 relative, except where the run itself amplifies float32 rounding beyond that. On
this random UNet UniPC does: moving the positive context by a relative 1e-5 moves euler/normal's
result 7.6e-5 but uni_pc/simple's 2.0e-3, and ComfyUI's UniPC computes in float32 in the VP view
(x / sqrt(1 + sigma^2) and back at each call), so its result differs from ours by 4.4e-4 (a relative
1e-6 move of the context moves ours 5.0e-4) while
tests/test_k_sampling.py shows the two UniPCs equal to 1e-13 in float64. For UniPC the test measures
that sensitivity (ours with the context moved by a relative 1e-6, float32-sized) and allows
`AMPLIFIED_ALLOWANCE` times it (at least 1e-4).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from comfyui_server import comfyui_checkout, run_checks
from test_k_sampling_nodes_comfyui import rel, run_ours, sampling_inputs

CHECKOUT, WHY = comfyui_checkout()
FAMILIES = tuple(os.environ.get("LCM_ACCEL_COMFYUI_FAMILIES", "sd15,sdxl").split(","))
pytestmark = [
    pytest.mark.skipif(CHECKOUT is None, reason=WHY),
    pytest.mark.skipif("sdxl" not in FAMILIES, reason="LCM_ACCEL_COMFYUI_FAMILIES leaves out sdxl"),
]
REPO = Path(__file__).resolve().parent.parent
REL_TOLERANCE = 1e-4
AMPLIFIED = ("sdxl.uni_pc.simple",)  # cases whose float32 sensitivity is measured (see above)
AMPLIFIED_ALLOWANCE = 4.0


def write_vega_unet(path: Path, seed: int = 0) -> None:
    """fixtures.comfyui_models' Segmind-Vega UNet, random from `seed` (norm weights about 1, the rest
    about 0), in LDM names and fp16, built without a float32 copy in memory (it is 849M parameters)."""
    from safetensors.torch import save_file

    from lcm_accel.fixtures.comfyui_models import STORAGE_DTYPE, vega_unet
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm

    with torch.device("meta"):
        unet = vega_unet()
    ones = {
        f"{name}.weight"
        for name, module in unet.named_modules()
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm))
    }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, param in unet.state_dict().items():
        value = torch.randn(param.shape, generator=generator) * 0.05 + (1.0 if key in ones else 0.0)
        state[key] = value.to(STORAGE_DTYPE)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet_to_ldm(state, 2).items()}, str(path))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    base = tmp_path_factory.mktemp("comfyui_k_sampling_sdxl")
    write_vega_unet(base / "models" / "diffusion_models" / "unet.safetensors")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-lcm-accel").symlink_to(REPO)
    inputs = sampling_inputs(2048, 8, pooled=1280)
    save_file(inputs, str(base / "k_sampling_inputs.safetensors"))
    checks = run_checks(CHECKOUT, REPO / "tests" / "comfyui_k_sampling_checks.py", base, args=("sdxl",))
    theirs = load_file(str(base / "k_sampling_outputs.safetensors"))
    return checks, theirs, run_ours(base, "sdxl", inputs, perturbed=AMPLIFIED)


def test_sdxl_pairs_equal_comfyuis(results):
    checks, theirs, ours = results
    assert checks["model"]["kind"] == "SDXL", checks["model"]
    differences = {case: rel(ours[case], theirs[case]) for case in theirs}
    allowed = {case: REL_TOLERANCE for case in theirs}
    print(f"\nSDXL ({checks['model']['config']} UNet), relative difference to ComfyUI:")
    for case in AMPLIFIED:
        sensitivity = rel(ours[f"{case}+perturbed"], ours[case])
        allowed[case] = max(REL_TOLERANCE, AMPLIFIED_ALLOWANCE * sensitivity)
        print(f"  ({case}: a relative 1e-6 move of the context moves ours {sensitivity:.2e})")
    for case, value in differences.items():
        print(f"  {case:24s} {value:.2e}   (allowed {allowed[case]:.1e})")
    assert all(differences[case] <= allowed[case] for case in theirs), (differences, allowed)
