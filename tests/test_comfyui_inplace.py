"""Our LoRA nodes patch ComfyUI's weights in place (skipped unless COMFYUI_PATH names a checkout).

Runs tests/comfyui_inplace_checks.py in ComfyUI's interpreter on an SD1.5-detectable UNet and
asserts, against ComfyUI's own core LoraLoader route on the same weights:
- after a prompt through our mixer every parameter keeps its Parameter object and data_ptr(); the
  restore state is at most 5% of the patched bytes (ComfyUI's route: a new copy of every patched
  weight, about 100%); the weights equal ComfyUI's chained LoraLoaders' within fp32 rounding; after
  switching to the plain clone, or unloading, they are bitwise the checkpoint's;
- core loaders before and after ours give the all-core chain's weights;
- random prompt sequences over clones with different LoRA sets and strengths, with Cancel while the
  weights change and unloads between prompts, always give the expected weights and end bitwise exact;
- LCMFastMode's capture wrapper (a CPU stand-in backend) captures once and its replays follow a
  strength change; on the CPU the node itself is a pass-through;
- ComfyUI's TorchCompileModel (inductor, CPU) before our LoRA node: a strength change gives the
  re-weighted model's output with no recompilation after the warm-up prompts (LCM_ACCEL_COMPILE_CHECK=0 skips this one: it
  compiles a UNet on the CPU, a few minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from comfyui_server import comfyui_checkout, run_checks, sd15_unet_base

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent
STEPS = int(os.environ.get("LCM_ACCEL_SEQUENCE_STEPS", "200"))
COMPILE = os.environ.get("LCM_ACCEL_COMPILE_CHECK", "1") != "0"


def write_lycoris(folder, unet, targets) -> None:
    """LoHa, LoKr and DoRA files (kohya names) on the attention layers, deltas a few % of the weights."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    loha, lokr, dora = {}, {}, {}
    for module, shape in targets.items():
        out, inp = shape[0], shape[1]
        key = "lora_unet_" + module.replace(".", "_")
        loha.update(
            {
                f"{key}.hada_w1_a": torch.randn(out, 4, generator=g) * 0.1,
                f"{key}.hada_w1_b": torch.randn(4, inp, generator=g) * 0.1,
                f"{key}.hada_w2_a": torch.randn(out, 4, generator=g) * 0.1,
                f"{key}.hada_w2_b": torch.randn(4, inp, generator=g) * 0.1,
                f"{key}.alpha": torch.tensor(4.0),
            }
        )
        lokr.update(
            {
                f"{key}.lokr_w1": torch.randn(8, 8, generator=g) * 0.03,
                f"{key}.lokr_w2": torch.randn(out // 8, inp // 8, generator=g) * 0.03,
            }
        )
        weight = unet.get_submodule(module).weight.detach().reshape(out, -1)
        dora.update(
            {
                f"{key}.lora_down.weight": torch.randn(4, inp, generator=g) * 0.1,
                f"{key}.lora_up.weight": torch.randn(out, 4, generator=g) * 0.01,
                f"{key}.alpha": torch.tensor(4.0),
                f"{key}.dora_scale": weight.norm(dim=0, keepdim=True) * 1.02,
            }
        )
    for name, tensors in (("loha", loha), ("lokr", lokr), ("dora", dora)):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya

    base = tmp_path_factory.mktemp("comfyui_inplace")
    unet, models = sd15_unet_base(base, REPO)
    targets = lora_targets(unet)
    write_kohya(models / "loras" / "lcm.safetensors", random_factors(targets, 8, seed=1, scale=0.012), alpha=8.0)
    write_kohya(models / "loras" / "style.safetensors", random_factors(targets, 4, seed=2, scale=0.018), alpha=2.0)
    attention = {k: v for k, v in targets.items() if ".attn" in k}  # small LoRAs for the long random sequences
    write_kohya(models / "loras" / "lcm_attn.safetensors", random_factors(attention, 8, seed=3, scale=0.02), alpha=8.0)
    write_kohya(
        models / "loras" / "style_attn.safetensors", random_factors(attention, 4, seed=4, scale=0.03), alpha=2.0
    )
    write_lycoris(models / "loras", unet, attention)
    args = (str(STEPS),) + (("compile",) if COMPILE else ())
    return run_checks(CHECKOUT, REPO / "tests" / "comfyui_inplace_checks.py", base, timeout=3000, args=args)


def test_prompt_keeps_parameters_and_needs_no_backup(checks):
    c = checks["inplace_identity_memory"]
    print("in place vs ComfyUI's route:", c)
    assert c["moved_ours"] == 0 and c["patched_weights"] > 0
    assert 0.02 <= c["relative_delta"] <= 0.1  # a real LoRA's strength: a few % of the weights
    assert c["ratio_ours"] <= 0.05 and c["ratio_core"] >= 0.95
    assert c["ours_vs_core"] <= 1e-5 * max(1.0, c["delta_scale"])
    assert c["plain_after_ours_bitwise_diffs"] == 0 and c["unloaded_bitwise_diffs"] == 0


def test_core_loaders_before_and_after_ours_compose(checks):
    c = checks["composition"]
    print("composition:", c)
    tol = 1e-5 * max(1.0, c["delta_scale"])
    for label in ("core_then_ours", "ours_then_core", "ours_core_ours"):
        assert c[label]["vs_core_chain"] <= tol and c[label]["vs_formula"] <= tol, label
    assert c["plain_after_bitwise_diffs"] == 0


def test_random_prompt_sequences_end_bitwise_exact(checks):
    c = checks["random_sequences"]
    print("random sequences:", c)
    assert c["n_wrong"] == 0, c["wrong"]
    assert c["checked"] > 0.7 * c["steps"] and c["interrupted"] > 0
    assert c["final_bitwise_diffs"] == 0 and c["unloaded_bitwise_diffs"] == 0


def test_lycoris_files_in_place_equal_comfyuis_loader(checks):
    c = checks["lycoris"]
    print("LyCORIS in place vs ComfyUI's LoraLoader:", c)
    for label, value in c["cases"].items():
        assert value["diff"] <= 1e-5 * max(1.0, value["delta"]) and value["delta"] > 0, label
        assert value["core_below"] or value["moved"] == 0, label  # ComfyUI's own patch below swaps Parameters
    assert c["plain_after_bitwise_diffs"] == 0


def test_fast_mode_replays_follow_a_strength_change(checks):
    c = checks["fast_mode"]
    print("LCMAccel_FastMode:", c)
    assert c["cpu_passthrough"]  # on the CPU the node says it runs eager and changes nothing
    assert c["captures"] == 1 and c["replays"] >= 3  # 2 prompts x 2 steps, one shape
    assert max(c["diffs"]) == 0.0 and c["strength_effect"] > 0


@pytest.mark.skipif(not COMPILE, reason="LCM_ACCEL_COMPILE_CHECK=0")
def test_torch_compile_survives_a_strength_change(checks):
    c = checks["torch_compile"]
    print("TorchCompileModel:", c)
    assert c["recompiles"] == 0 and c["graphs_before"] > 0
    assert c["strength_effect"] > 1e-3 * c["scale"]
    assert c["compiled_vs_eager"] <= 1e-3 * max(1.0, c["scale"])
