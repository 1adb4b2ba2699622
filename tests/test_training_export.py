"""The distilled LoRA file: loads in our loader and in diffusers with the student's output; the CLI
end to end on the tiny SD1.5 checkpoint."""

from __future__ import annotations

import builtins
import copy

import pytest
import torch
from training_helpers import micro_unet, one_thread

from lcm_accel.lora_merge import LoraPatcher, load_lora
from lcm_accel.training.distill import DistillSettings
from lcm_accel.training.export import export_lora
from lcm_accel.training.lcd import LCDSettings
from lcm_accel.training.student import add_lora, require_training_packages

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _trained_student():
    base = micro_unet(2)
    student = copy.deepcopy(base)
    torch.manual_seed(0)
    params = add_lora(student, 4, alpha=2.0)  # alpha != rank: the scale must survive both formats
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return base, student


def _inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300, 800]), torch.randn(2, 3, 16, generator=g)


@pytest.mark.parametrize("lora_format", ["kohya", "peft"])
def test_saved_lora_loads_in_our_loader_and_in_diffusers(tmp_path, lora_format):
    from diffusers import StableDiffusionPipeline

    base, student = _trained_student()
    x, t, c = _inputs()
    with torch.no_grad():
        expected = student(x, t, encoder_hidden_states=c).sample
        plain = base(x, t, encoder_hidden_states=c).sample
    settings = DistillSettings(lcd=LCDSettings(w_min=5, w_max=15))
    path = export_lora(student, tmp_path / "lcm.safetensors", settings, "sd15", 123, "base.safetensors", lora_format)

    lora = load_lora(path)
    assert lora.metadata["lcm_accel.rank"] == "4" and lora.metadata["lcm_accel.steps"] == "123"
    assert lora.metadata["lcm_accel.w_range"] == "5.0-15.0" and lora.metadata["lcm_accel.method"] == "lcm-lora:lcd"
    ours = copy.deepcopy(base)
    report = LoraPatcher(ours).apply([(lora, 1.0)])
    assert report is not None
    with torch.no_grad():
        got = ours(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    theirs = copy.deepcopy(base)
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, theirs)
    with torch.no_grad():
        got = theirs(x, t, encoder_hidden_states=c).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(expected, plain, atol=1e-3)  # the LoRA matters


def test_kohya_names_are_the_ones_comfyui_maps(tmp_path):
    """ComfyUI's comfy/lora.py maps 'lora_unet_' + the diffusers module path with '.' -> '_'."""
    base, student = _trained_student()
    path = export_lora(student, tmp_path / "l.safetensors", DistillSettings(), "sd15", 1, "b")
    keys = set(load_lora(path).unet)
    modules = {n for n, m in base.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    flat = {m.replace(".", "_") for m in modules}
    assert keys and keys <= flat
    assert "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in keys
    assert "down_blocks_0_resnets_0_conv1" in keys and "down_blocks_0_downsamplers_0_conv" in keys


def test_missing_training_packages_name_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "accelerate":
            raise ImportError("no accelerate")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "comfyui-lcm-accel\[train\]"'):
        require_training_packages()


def test_reward_registry_errors(tmp_path):
    from lcm_accel.training.rewards import load_reward

    with pytest.raises(ValueError, match="--reward-model"):
        load_reward("hpsv2")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_reward("imagereward", str(tmp_path / "missing.pt"))
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="--reward-tokenizer"):  # no tokenizer files beside the weights
        load_reward("hpsv2", str(tmp_path / "w.pt"))
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ValueError, match=r"cannot read it \(imagereward weights"):
        load_reward("imagereward", str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="takes no --reward-model"):
        load_reward("colorfulness", str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="unknown"):
        load_reward("nope")
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    load_reward("colorfulness")(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_cli_end_to_end_on_the_tiny_checkpoint(tmp_path, capsys):
    from PIL import Image

    from lcm_accel.cli import main
    from lcm_accel.fixtures import shared_models_root

    data = tmp_path / "data"
    data.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (80, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} square")
    base = shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors"
    out = tmp_path / "lcm.safetensors"
    args = [
        "train",
        "lcm-lora",
        "--base",
        str(base),
        "--data",
        str(data),
        "--out",
        str(out),
        "--rank",
        "2",
        "--steps",
        "2",
        "--batch",
        "2",
        "--resolution",
        "64",
        "--w",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 0, capsys.readouterr().err
    lora = load_lora(out)
    assert lora.format == "kohya" and lora.metadata["lcm_accel.base_family"] == "sd15"
    assert (tmp_path / "lcm.safetensors.work" / "loss.png").is_file()
    # a second run into the same work dir must be told to resume; resuming a finished run re-exports
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main(args + ["--resume", str(tmp_path / "lcm.safetensors.work")]) == 0
    assert (
        main(
            [
                "train",
                "lcm-lora",
                "--base",
                str(base),
                "--data",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "o2.safetensors"),
            ]
        )
        == 2
    )
    assert "--data" in capsys.readouterr().err
