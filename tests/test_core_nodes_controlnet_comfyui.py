"""ControlNetLoader + ControlNetApplyAdvanced / ControlNetApply against ComfyUI 0.3.64's own (skipped unless
COMFYUI_PATH names a checkout): the same files and inputs go through ComfyUI's nodes in its
interpreter (tests/comfyui_core_nodes_controlnet_checks.py) and through ours here.

- interfaces: input names and order, types, defaults and ranges, outputs and category;
- KSampler euler with the ControlNet on an SD1.5-detectable UNet: cfg 1 and cfg 5, a strength and a
  start / end range, two chained ControlNets, strength 0; our LDM file and our diffusers file give
  ComfyUI's latent (ComfyUI 0.3.64 recognises a diffusers-named SD1.5 ControlNet only at the full
  SD1.5 size, so the diffusers file is compared with ComfyUI's result for the same weights in LDM
  names; the check reports what ComfyUI made of each file);
- the older ControlNetApply (one conditioning; ComfyUI hands its ControlNet to a negative that has
  none): cfg 1 and 5, chained, a negative with its own, two positive entries, strength 0;
- an LCM-LoRA through LoraLoaderModelOnly and the pack's LCM KSampler, with a ControlNet.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from comfyui_server import comfyui_checkout, run_checks, sd15_unet_base

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent
REL_TOLERANCE = 1e-4
LAYOUTS = {"ldm": "control_ldm.safetensors", "diffusers": "control_diffusers.safetensors"}


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "cond_p": torch.randn(1, 77, 768, generator=g),
        "cond_n": torch.randn(1, 77, 768, generator=g),
        "latent": torch.randn(1, 4, 16, 16, generator=g),
        "hint": torch.rand(1, 100, 140, 3, generator=g),  # another aspect ratio: centre crop, then resize
        "hint_2": torch.rand(1, 64, 64, 3, generator=g),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.torch import save_file

    from lcm_accel.fixtures.tiny_controlnets import controlnet_for, write_controlnet
    from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya

    base = tmp_path_factory.mktemp("comfyui_controlnet")
    unet, models = sd15_unet_base(base, REPO)
    net = controlnet_for(unet, seed=1)
    for layout, name in LAYOUTS.items():
        write_controlnet(models / "controlnet" / name, net, layout)
    factors = random_factors(lora_targets(unet), 4, seed=2, scale=0.05)
    write_kohya(models / "loras" / "lcm.safetensors", factors, alpha=4.0)
    inputs = _inputs()
    save_file(inputs, str(base / "controlnet_inputs.safetensors"))
    checks = run_checks(CHECKOUT, REPO / "tests" / "comfyui_core_nodes_controlnet_checks.py", base)
    from safetensors.torch import load_file

    return base, inputs, checks, load_file(str(base / "controlnet_outputs.safetensors"))


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert tuple(ours.shape) == tuple(theirs.shape), (tuple(ours.shape), tuple(theirs.shape))
    return float((ours.float() - theirs).abs().max()) / max(float(theirs.abs().max()), 1e-12)


def _paths(base: Path):
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    return use_model_paths(ModelPaths(base / "models", input_dir=base / "input"))


def test_interfaces_equal_comfyuis(setup):
    from comfyui_core_nodes_checks import interface
    from comfyui_core_nodes_controlnet_checks import NODES as CHECKED

    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS

    base, _, checks, _ = setup
    theirs = checks["interfaces"]["nodes"]
    with _paths(base):
        for name in CHECKED:
            ours = interface(NODE_CLASS_MAPPINGS[name])
            for key in ("inputs", "order", "return_types", "category", "function"):
                assert ours[key] == theirs[name][key], f"{name}.{key}: ours {ours[key]} ComfyUI {theirs[name][key]}"
    print("what ComfyUI made of the files:", checks["files"]["found"])
    assert checks["files"]["found"]["control_ldm.safetensors"] == "ControlNet"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_ksampler_with_controlnet_equals_comfyuis(setup, layout):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES

    base, inputs, _, theirs = setup
    with _paths(base):
        (model,) = NODES["UNETLoader"]().load_unet("unet.safetensors", "default")
        (net,) = NODES["ControlNetLoader"]().load_controlnet(LAYOUTS[layout])
    assert net.layout == layout and net.family == "sd15"
    positive, negative = [[inputs["cond_p"], {}]], [[inputs["cond_n"], {}]]
    latent = {"samples": inputs["latent"]}
    apply = NODES["ControlNetApplyAdvanced"]().apply_controlnet
    ks = NODES["KSampler"]().sample

    def run(pos, neg, cfg, seed=3, steps=4, sampler="euler"):
        return ks(model, seed, steps, cfg, sampler, "normal", pos, neg, latent)[0]["samples"]

    ours = {"plain.cfg1": run(positive, negative, 1.0)}
    full = apply(positive, negative, net, inputs["hint"], 1.0, 0.0, 1.0)
    ours["full.cfg1"] = run(*full, 1.0)
    ours["full.cfg5"] = run(*full, 5.0)
    ranged = apply(positive, negative, net, inputs["hint"], 0.7, 0.2, 0.7)
    ours["ranged.cfg5"] = run(*ranged, 5.0, steps=6)
    chained = apply(*ranged, net, inputs["hint_2"], 0.5, 0.0, 0.5)
    ours["chained.cfg5"] = run(*chained, 5.0, steps=6)
    ours["zero.cfg5"] = run(*apply(positive, negative, net, inputs["hint"], 0.0, 0.0, 1.0), 5.0)
    ours["plain.cfg5"] = run(positive, negative, 5.0)
    differences = {key: _rel(value, theirs[key]) for key, value in ours.items()}
    print(f"{layout} ControlNet, relative difference to ComfyUI:", {k: f"{v:.2e}" for k, v in differences.items()})
    assert all(value <= REL_TOLERANCE for value in differences.values()), differences
    effect = _rel(theirs["plain.cfg5"], theirs["full.cfg5"])
    assert effect > 0.05, f"the ControlNet hardly changes ComfyUI's result ({effect:.2e}): the check proves little"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_lcm_lora_and_lcm_ksampler_with_controlnet_equal_comfyuis(setup, layout):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
    from lcm_accel.nodes import PACK_NODES

    base, inputs, _, theirs = setup
    with _paths(base):
        (model,) = NODES["UNETLoader"]().load_unet("unet.safetensors", "default")
        (lora,) = NODES["LoraLoaderModelOnly"]().load_lora_model_only(model, "lcm.safetensors", 1.0)
        (net,) = NODES["ControlNetLoader"]().load_controlnet(LAYOUTS[layout])
    positive, negative = [[inputs["cond_p"], {}]], [[inputs["cond_n"], {}]]
    pos, neg = NODES["ControlNetApplyAdvanced"]().apply_controlnet(
        positive, negative, net, inputs["hint"], 0.9, 0.0, 0.8
    )
    node = PACK_NODES["LCMAccel_KSampler"]()
    sample = getattr(node, node.FUNCTION)
    latent = {"samples": inputs["latent"]}
    differences = {}
    for cfg in (1.0, 1.5):
        ours = sample(lora, 7, 4, cfg, pos, neg, latent, 50, 0.0, 1.0)[0]["samples"]
        differences[f"lcm.cfg{cfg}"] = _rel(ours, theirs[f"lcm.cfg{cfg}"])
    plain = sample(lora, 7, 4, 1.0, positive, negative, latent, 50, 0.0, 1.0)[0]["samples"]
    differences["lcm.plain"] = _rel(plain, theirs["lcm.plain"])
    print(f"LCM-LoRA + {layout} ControlNet, relative difference to ComfyUI:", differences)
    effect = _rel(theirs["lcm.plain"], theirs["lcm.cfg1.0"])
    assert effect > 0.05, f"the ControlNet hardly changes ComfyUI's LCM result ({effect:.2e})"
    assert all(value <= REL_TOLERANCE for value in differences.values()), differences


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_old_controlnet_apply_equals_comfyuis(setup, layout):
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES

    base, inputs, _, theirs = setup
    with _paths(base):
        (model,) = NODES["UNETLoader"]().load_unet("unet.safetensors", "default")
        (net,) = NODES["ControlNetLoader"]().load_controlnet(LAYOUTS[layout])
    positive, negative = [[inputs["cond_p"], {}]], [[inputs["cond_n"], {}]]
    latent = {"samples": inputs["latent"]}
    apply = NODES["ControlNetApply"]().apply_controlnet
    ks = NODES["KSampler"]().sample

    def run(pos, neg, cfg, seed=3, steps=4):
        return ks(model, seed, steps, cfg, "euler", "normal", pos, neg, latent)[0]["samples"]

    (pos,) = apply(positive, net, inputs["hint"], 0.8)
    ours = {"old.cfg1": run(pos, negative, 1.0), "old.cfg5": run(pos, negative, 5.0)}
    (chained,) = apply(pos, net, inputs["hint_2"], 0.5)
    ours["old.chained.cfg5"] = run(chained, negative, 5.0)
    (own,) = apply(negative, net, inputs["hint_2"], 0.6)
    ours["old.own_negative.cfg5"] = run(pos, own, 5.0)
    (second,) = apply([[inputs["cond_n"], {}]], net, inputs["hint_2"], 0.5)
    ours["old.two_entries.cfg5"] = run(pos + second, negative, 5.0)
    (zero,) = apply(positive, net, inputs["hint"], 0.0)
    ours["old.zero.cfg5"] = run(zero, negative, 5.0)
    differences = {key: _rel(value, theirs[key]) for key, value in ours.items()}
    print(
        f"ControlNetApply, {layout} ControlNet, relative difference to ComfyUI:",
        {k: f"{v:.2e}" for k, v in differences.items()},
    )
    assert all(value <= REL_TOLERANCE for value in differences.values()), differences
    effect = _rel(theirs["old.cfg5"], theirs["plain.cfg5"])
    assert effect > 0.05, f"ControlNetApply hardly changes ComfyUI's result ({effect:.2e})"
    # ComfyUI hands the ControlNet to the negative: without that, the result is another one
    positive_only = [[tensor, {**options, "control_apply_to_uncond": False}] for tensor, options in pos]
    alone = _rel(run(positive_only, negative, 5.0), theirs["old.cfg5"])
    assert alone > 1e-3, f"the negative's ControlNet hardly matters ({alone:.2e}): the check proves little"
