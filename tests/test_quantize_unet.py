"""Quantized UNets: layers swapped on their own parents with the keep-list honoured, merge-then-quantize
equals quantizing the merged weights, LoRAs on a quantized MODEL are refused or re-quantized from the
kept source, a saved quantized checkpoint reloads bit-identically, and the node's errors are clear."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lcm_accel.fixtures import tiny_model
from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.nodes.quantize_node import LCMQuantizeUNet
from lcm_accel.quantize import QuantizeError, dequantize, quantize, quantize_unet, quantized_layers
from lcm_accel.runtime import checkpoints as checkpoint_loader
from lcm_accel.runtime.lora_files import load_lora_cached
from lcm_accel.runtime.lora_state import activate_patches, add_loras
from lcm_accel.runtime.quantized import quantize_model, write_quantized_checkpoint

CKPT = "v1-5-pruned-emaonly.safetensors"
LCM = "lcm-lora-sdv1-5.safetensors"
STYLE = "style-lora-sd15.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("quant_models"))


def _load(root: Path):
    return checkpoint_loader.load_checkpoint(root / "models" / "checkpoints" / CKPT)


def _lora(root: Path, name: str):
    return load_lora_cached(root / "models" / "loras" / name)


def _unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 4, 16, 16, generator=g),
        torch.tensor([500]),
        torch.randn(1, 77, unet.config.cross_attention_dim, generator=g),
    )


def _weights_of(unet) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach().clone()
        for n, m in unet.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    }


def _assert_quantized_from(unet, merged: dict[str, torch.Tensor], fmt: str, group_size: int = 64):
    layers = quantized_layers(unet)
    assert layers
    for name, layer in layers:
        expected = quantize(merged[name], fmt, group_size)
        assert torch.equal(layer.qdata.view(torch.uint8), expected.data.view(torch.uint8)), name
        assert torch.equal(layer.scales, expected.scales), name


@pytest.mark.parametrize("fmt,limit", [("int8", 0.05), ("fp8_e4m3", 0.15), ("int4", 0.6)])
def test_quantize_unet_swaps_layers_in_place_and_keeps_the_defaults(fmt, limit):
    unet = copy.deepcopy(tiny_model("sd15").unet)
    x = _unet_inputs(unet)
    with torch.no_grad():
        reference = unet(*x).sample
    parent = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    report = quantize_unet(unet, fmt)
    assert set(report.kept) == {"conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}
    assert type(unet.conv_in) is torch.nn.Conv2d and type(unet.time_embedding.linear_1) is torch.nn.Linear
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1 is parent  # swapped on the parent
    assert "weight" not in dict(parent.to_q.named_parameters())
    assert report.bytes_after < report.bytes_before / 3.5
    with torch.no_grad():
        out = unet(*x).sample
    assert float((out - reference).norm() / reference.norm()) < limit


def test_ldm_names_keep_first_last_conv_and_time_embedding():
    seq = lambda *m: torch.nn.Sequential(*m)  # noqa: E731
    ldm = torch.nn.Module()
    ldm.input_blocks = torch.nn.ModuleList([seq(torch.nn.Conv2d(4, 8, 3)), seq(torch.nn.Conv2d(8, 8, 3))])
    ldm.time_embed = seq(torch.nn.Linear(8, 32), torch.nn.SiLU(), torch.nn.Linear(32, 32))
    ldm.out = seq(torch.nn.GroupNorm(2, 8), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3))
    report = quantize_unet(ldm, "int8")
    assert set(report.kept) == {"input_blocks.0.0", "time_embed.0", "time_embed.2", "out.2"}
    assert report.quantized == ["input_blocks.1.0"]


def test_keep_patterns_are_globs_and_a_pattern_matching_nothing_is_refused():
    unet = copy.deepcopy(tiny_model("sd15").unet)
    report = quantize_unet(copy.deepcopy(unet), "int8", keep="default, *attn2.to_k")
    assert [n for n in report.kept if n.endswith("attn2.to_k")] and all("attn2.to_k" not in n for n in report.quantized)
    before = _weights_of(unet)
    with pytest.raises(QuantizeError, match="'down_blocks.9.typo' matches no Linear/Conv2d layer"):
        quantize_unet(unet, "int8", keep="default,down_blocks.9.typo")
    assert not quantized_layers(unet) and all(torch.equal(before[n], w) for n, w in _weights_of(unet).items())


def test_merge_then_quantize_equals_quantizing_the_merged_weights(root):
    model, _, _ = _load(root)
    with_loras = add_loras(model, [(_lora(root, LCM), 1.0), (_lora(root, STYLE), 0.8)])
    quantized = quantize_model(with_loras, "int4", group_size=32)
    activate_patches(with_loras)  # the shared float UNet holds base + both LoRAs (lora_merge.LoraPatcher)
    merged = _weights_of(with_loras.unet)
    _assert_quantized_from(quantized.unet, merged, "int4", 32)
    assert not quantized.patches and not quantized_layers(model.unet)  # the shared float UNet is untouched
    activate_patches(model)
    base = _weights_of(model.unet)
    assert any(not torch.equal(base[n], merged[n]) for n in merged)  # the LoRAs did change weights


def test_a_lora_on_a_quantized_model_is_refused_without_the_source(root):
    model, _, _ = _load(root)
    quantized = quantize_model(model, "int8")
    with pytest.raises(QuantizeError, match="keep_source"):
        add_loras(quantized, [(_lora(root, LCM), 1.0)])


def test_with_the_source_a_lora_is_merged_and_re_quantized(root):
    model, _, _ = _load(root)
    quantized = quantize_model(model, "fp8_e4m3", keep_source=True)
    lora = _lora(root, LCM)
    for weight in (1.0, 0.5, 0.0):  # apply, re-weight, re-weight to zero
        patched = add_loras(quantized, [(lora, weight)])
        activate_patches(patched)
        with torch.no_grad():
            patched.unet(*_unet_inputs(patched.unet))  # layers re-quantize on their next call
        reference = add_loras(model, [(lora, weight)])
        activate_patches(reference)
        _assert_quantized_from(patched.unet, _weights_of(reference.unet), "fp8_e4m3")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_a_saved_quantized_checkpoint_reloads_bit_identically(root, fmt):
    model, clip, vae = _load(root)
    quantized = quantize_model(add_loras(model, [(_lora(root, LCM), 1.0)]), fmt, keep="default,*attn2*")
    path = write_quantized_checkpoint(
        root / "models" / "checkpoints" / f"q-{fmt}.safetensors", quantized, root / "models" / "checkpoints" / CKPT
    )
    loaded, clip2, vae2 = checkpoint_loader.load_checkpoint(path)
    saved_state, loaded_state = quantized.unet.state_dict(), loaded.unet.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    bits = lambda t: t.view(torch.uint8) if t.element_size() == 1 else t  # noqa: E731 - fp8 has no ==
    for key, value in saved_state.items():
        assert value.dtype == loaded_state[key].dtype and torch.equal(bits(value), bits(loaded_state[key])), key
    for (_, a), (_, b) in zip(quantized_layers(quantized.unet), quantized_layers(loaded.unet)):
        assert torch.equal(dequantize(a.quantized), dequantize(b.quantized))
    with torch.no_grad():
        x = _unet_inputs(quantized.unet)
        assert torch.equal(quantized.unet(*x).sample, loaded.unet(*x).sample)
    for a, b in ((clip.text_encoders[0], clip2.text_encoders[0]), (vae.vae, vae2.vae)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_node_errors_name_the_node_and_the_input(root):
    model, _, _ = _load(root)
    node = LCMQuantizeUNet()
    with pytest.raises(ValueError, match="LCMAccel_QuantizeUNet: format must be one of int8, fp8_e4m3fn, int4"):
        node.quantize(model, "int3", "default", 64, False)
    with pytest.raises(ValueError, match="LCMAccel_QuantizeUNet: keep pattern 'mid_block.nope'"):
        node.quantize(model, "int8", "default, mid_block.nope", 64, False)
    with pytest.raises(ValueError, match="LCMAccel_QuantizeUNet: group_size must be even"):
        node.quantize(model, "int4", "default", 63, False)
    (quantized,) = node.quantize(model, "int8", "default", 64, False)
    with pytest.raises(ValueError, match="already quantized"):
        node.quantize(quantized, "int8", "default", 64, False)


def test_cli_writes_a_quantized_checkpoint_the_loader_reads(root, capsys):
    from lcm_accel.cli import main

    ckpts = root / "models" / "checkpoints"
    out = ckpts / "cli-int4.safetensors"
    status = main(
        [
            "quantize",
            "--base",
            str(ckpts / CKPT),
            "--lora",
            f"{root / 'models' / 'loras' / LCM}:1.0",
            "--format",
            "int4",
            "--keep",
            "default,*attn2.to_k",
            "--out",
            str(out),
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    loaded, _, _ = checkpoint_loader.load_checkpoint(out)
    model, _, _ = _load(root)
    reference = quantize_model(add_loras(model, [(_lora(root, LCM), 1.0)]), "int4", keep="default,*attn2.to_k")
    assert [n for n, _ in quantized_layers(loaded.unet)] == [n for n, _ in quantized_layers(reference.unet)]
    for (_, a), (_, b) in zip(quantized_layers(loaded.unet), quantized_layers(reference.unet)):
        assert torch.equal(a.qdata, b.qdata) and torch.equal(a.scales, b.scales)
    assert main(["quantize", "--base", str(ckpts / CKPT), "--format", "int4", "--keep", "nope", "--out", str(out)]) == 2
    assert "keep pattern 'nope'" in capsys.readouterr().err
