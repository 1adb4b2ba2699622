"""The LoRA nodes' CLIP side and LORA_STACK input inside real ComfyUI (skipped unless COMFYUI_PATH is set).

ComfyUI's UNETLoader / CLIPLoader load a small SD1.5-detectable UNet and a full-size CLIP-L (random
weights); the checks run in ComfyUI's interpreter (tests/comfyui_clip_checks.py) and are asserted here:
- LCMAdapterMixer / LCMLoraLoader with a CLIP give the core LoraLoader's text-encoder weights and
  conditioning bit for bit (kohya `lora_te_` and diffusers `text_encoder.` files), and the same UNet;
- a LORA_STACK (list of (name, model, clip) tuples, "None" entries skipped) mixes like the slots;
- no CLIP connected: the CLIP output is None; a UNet-only LoRA returns the input CLIP;
- an SDXL `lora_te2_` part on an SD1.5 CLIP is refused naming the file, the input CLIP unchanged;
- ComfyUI's own prompt validation accepts the mixer's CLIP output, a LORA_STACK link, a mixer saved
  before these inputs existed, and the quantize node's `fp8_e4m3fn` and older `fp8_e4m3` names;
- the standalone host's text-encoder result equals ComfyUI's core LoraLoader's (fp16 rounding).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_server import comfyui_checkout, run_checks

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent
CLIP_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _clip_l():
    """CLIP-L (SD1.5's text encoder) at full size with random fp16 weights."""
    import torch
    from transformers import CLIPTextModel

    from lcm_accel.fixtures.comfyui_models import clip_l_config
    from lcm_accel.fixtures.tiny_models import randomize

    encoder = CLIPTextModel(clip_l_config()).eval()
    randomize(encoder, torch.Generator().manual_seed(5))
    return encoder.half()


def _te_tensors(encoder, rank: int, seed: int, layout: str) -> dict:
    """A text-encoder LoRA for every attention / MLP linear of `encoder` in `layout`:
    kohya ("lora_te_", "lora_te2_") or diffusers ("text_encoder.")."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in encoder.named_modules():
        if not name.endswith(CLIP_MODULES):
            continue
        path = name if name.startswith("text_model.") else "text_model." + name
        down = (torch.randn(rank, module.in_features, generator=g) * 0.05).half()
        up = (torch.randn(module.out_features, rank, generator=g) * 0.05).half()
        if layout == "diffusers":
            tensors.update({f"text_encoder.{path}.lora_A.weight": down, f"text_encoder.{path}.lora_B.weight": up})
        else:
            key = layout + path.replace(".", "_")
            tensors.update(
                {
                    f"{key}.lora_down.weight": down,
                    f"{key}.lora_up.weight": up,
                    f"{key}.alpha": torch.tensor(float(rank) / 2),
                }
            )
    return tensors


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, dict]:
    import torch
    from safetensors.torch import save_file

    from lcm_accel.fixtures.comfyui_models import sd15_unet
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm
    from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors
    from lcm_accel.lora_merge.writer import kohya_state_dict

    base = tmp_path_factory.mktemp("comfyui_clip")
    models = base / "models"
    for folder in ("diffusion_models", "text_encoders", "loras"):
        (models / folder).mkdir(parents=True)
    torch.manual_seed(0)
    unet = sd15_unet().eval()
    save_file(
        {k: v.contiguous() for k, v in unet_to_ldm(unet.state_dict(), 1).items()},
        str(models / "diffusion_models" / "unet.safetensors"),
    )
    encoder = _clip_l()
    save_file(
        {"text_model." + k: v.contiguous() for k, v in encoder.state_dict().items()},
        str(models / "text_encoders" / "clip_l.safetensors"),
    )
    unet_part = kohya_state_dict(random_factors(lora_targets(unet), 4, seed=1, scale=0.05), alpha=2.0)
    loras = models / "loras"
    save_file({**unet_part, **_te_tensors(encoder, 4, 2, "lora_te_")}, str(loras / "style_te.safetensors"))
    save_file(_te_tensors(encoder, 2, 3, "diffusers"), str(loras / "te_diffusers.safetensors"))
    save_file(
        {**_te_tensors(encoder, 2, 4, "lora_te1_"), **_te_tensors(encoder, 2, 4, "lora_te2_")},
        str(loras / "xl_te.safetensors"),
    )
    save_file(unet_part, str(loras / "unet_only.safetensors"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-lcm-accel").symlink_to(REPO)
    (base / "custom_nodes" / "lcm_test_lora_stack.py").write_text((REPO / "tests" / "lora_stack_node.py").read_text())
    return base, run_checks(CHECKOUT, REPO / "tests" / "comfyui_clip_checks.py", base)


@pytest.fixture(scope="module")
def checks(setup) -> dict:
    return setup[1]


def test_text_encoder_part_equals_the_core_lora_loader(checks):
    p = checks["parity"]
    print("CLIP parity:", p)
    assert p["changed_clip_weights"] == p["changed_ours"] == 12 * len(CLIP_MODULES)
    assert p["clip_weights_vs_core"] == 0.0 and p["encoded_vs_core"] == 0.0 and p["encoded_change"] > 1e-3
    assert p["loader_clip_vs_core"] == 0.0
    assert p["unet_vs_core"] <= 1e-5 * max(1.0, p["unet_delta"]) and p["unet_delta"] > 0
    assert p["input_clip_patches"] == 0 and p["clip_weights_after"] == 0.0


def test_lora_stack_mixes_like_the_slots(checks):
    s = checks["stack"]
    print("LORA_STACK:", s)
    assert s["changed_chained"] > 0
    assert s["slots_vs_chained"] == s["stack_vs_chained"] == s["split_vs_chained"] == 0.0
    assert s["stack_unet_vs_slots"] == 0.0 and s["split_unet_vs_slots"] <= 1e-6


def test_unconnected_clip_gives_none(checks):
    assert checks["no_clip"] == {"mixer": True, "loader": True, "unet_only_returns_input": True}


def test_text_encoder_part_for_another_family_is_refused(checks):
    bad = checks["bad_te"]
    assert bad["raised"] == "LoraPatchError" and "xl_te.safetensors" in bad["message"]
    assert "lora_te2_" in bad["message"] and bad["unchanged"]


def test_bad_lora_stack_entries_name_the_entry(checks):
    bad = checks["bad_stack"]
    assert "LCMAccel_AdapterMixer4: lora_stack must be a LORA_STACK" in bad["not_list"]
    assert "LCMAccel_AdapterMixer4: lora_stack[0] must be (lora_name, model_strength, clip_strength)" in bad["short"]
    assert "lora_stack[0] 'nope.safetensors' is not in the loras folder" in bad["missing"]
    assert "lora_stack[0] model_strength must be a finite number" in bad["nan"]


def test_comfyui_validation_accepts_new_and_saved_inputs(checks):
    v = checks["validation"]
    for key in ("legacy", "clip_and_stack", "fp8_new", "fp8_saved"):
        assert v[key][0] is True, (key, v[key])
    assert v["fp8_bad"][0] is False and "fp8_e5m2" in str(v["fp8_bad"])


def test_standalone_text_encoder_equals_comfyui_core(setup):
    """The same CLIP-L and LoRA on the standalone host (through the pack's mixer) give ComfyUI core
    LoraLoader's patched text-encoder weights, up to ComfyUI's fp16 storage."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from lcm_accel.fixtures.comfyui_models import clip_l_config
    from lcm_accel.nodes.lora_nodes import LCMAdapterMixer
    from lcm_accel.runtime.lora_state import activate_clip_patches
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
    from lcm_accel.runtime.model_types import ClipHost

    base, _ = setup
    models = base / "models"
    state = load_file(str(models / "text_encoders" / "clip_l.safetensors"))
    encoder = CLIPTextModel(clip_l_config()).eval()
    encoder.load_state_dict({k[len("text_model.") :]: v.float() for k, v in state.items()})
    clip = ClipHost(tokenizer=None, text_encoders=[encoder], family="sd15")
    with use_model_paths(ModelPaths(models)):
        model, patched = LCMAdapterMixer().mix(None, "style_te.safetensors", 0.0, clip=clip, clip_weight_1=0.6)
    assert model is None and patched is not clip
    activate_clip_patches(patched)
    comfy = load_file(str(base / "comfy_clip_weights.safetensors"))
    ours = {"text_model." + k: v.detach() for k, v in encoder.state_dict().items()}
    changed = 0
    for key, theirs in comfy.items():
        if key not in ours:
            continue  # ComfyUI-only buffers (position ids, text projection)
        base_value = state[key].float()
        changed += not torch.equal(theirs, base_value)
        ulp = float(theirs.abs().max()) * 2.0**-10  # one fp16 step at the largest magnitude
        assert float((ours[key].float() - theirs).abs().max()) <= ulp, key
    assert changed == 12 * len(CLIP_MODULES)
