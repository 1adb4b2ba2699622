"""Reading LoRA files: every bad file is refused with a message naming it, and a refused load
leaves the model's weights, storage and Parameter objects untouched."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from test_lora_helpers import (
    TINY_SDXL,
    assert_unchanged,
    lora_targets,
    random_factors,
    snapshot,
    tiny_unet,
    write_kohya,
    write_peft,
)

from lcm_accel.lora_merge import LoraFileError, LoraPatcher, LoraPatchError, load_lora


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture()
def good_file(tmp_path, unet):
    return write_kohya(tmp_path / "good.safetensors", random_factors(lora_targets(unet), 4, 0), alpha=2.0)


def _refused_without_change(unet, path, match):
    snap = snapshot(unet)
    with pytest.raises((LoraFileError, LoraPatchError), match=match):
        LoraPatcher(unet).apply([(load_lora(path), 1.0)])
    assert_unchanged(unet, snap)


def test_empty_file(tmp_path, unet):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _refused_without_change(unet, path, r"empty\.safetensors' is empty")


@pytest.mark.parametrize("cut", [4, 20, -7])
def test_truncated_file(tmp_path, unet, good_file, cut):
    data = good_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:cut])
    _refused_without_change(unet, path, r"cut\.safetensors' is (truncated|not a valid safetensors)")


def _raw_safetensors(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_corrupt_header_json(tmp_path, unet):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    _refused_without_change(unet, path, r"bad\.safetensors' has a corrupt safetensors header")


def test_overlapping_tensors(tmp_path, unet):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    path = _raw_safetensors(
        tmp_path / "ov.safetensors", {"a.lora_down.weight": entry, "b": {**entry, "data_offsets": [4, 12]}}, bytes(12)
    )
    _refused_without_change(unet, path, r"ov\.safetensors' is corrupt: tensors .* overlap")


def test_offsets_inconsistent_with_shape(tmp_path, unet):
    path = _raw_safetensors(
        tmp_path / "sz.safetensors", {"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)
    )
    _refused_without_change(unet, path, r"sz\.safetensors': tensor 'x' of shape \[3\]")


def test_unknown_dtype(tmp_path, unet):
    path = _raw_safetensors(
        tmp_path / "dt.safetensors", {"x": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)
    )
    _refused_without_change(unet, path, r"dt\.safetensors': tensor 'x' has unsupported dtype")


def test_not_a_lora(tmp_path, unet):
    path = tmp_path / "ckpt.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(path))
    _refused_without_change(unet, path, r"ckpt\.safetensors' is not a LoRA")


def test_random_bytes_are_not_safetensors(tmp_path, unet):
    path = tmp_path / "noise.bin"
    path.write_bytes(torch.randint(0, 255, (1000,), dtype=torch.uint8).numpy().tobytes()[:1000] + b"x")
    _refused_without_change(unet, path, r"noise\.bin")


def test_pickle_with_code_is_refused(tmp_path, unet):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    _refused_without_change(unet, path, r"evil\.pt' could not be read as a weights-only torch checkpoint")


def test_pickled_lora_is_read_weights_only(tmp_path, unet, good_file):
    from safetensors.torch import load_file

    path = tmp_path / "lora.pt"
    torch.save(load_file(str(good_file)), path)
    a, b = load_lora(path), load_lora(good_file)
    assert a.unet.keys() == b.unet.keys()
    assert all(torch.equal(a.unet[k].up, b.unet[k].up) for k in a.unet)


def test_mismatched_rank_in_file(tmp_path, unet):
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    path = tmp_path / "rank.safetensors"
    save_file(
        {f"{key}.lora_down.weight": torch.zeros(4, 32, 1, 1), f"{key}.lora_up.weight": torch.zeros(32, 3, 1, 1)},
        str(path),
    )
    _refused_without_change(
        unet, path, r"rank\.safetensors': module 'down_blocks_0_attentions_0_proj_in' has mismatched factors"
    )


def test_wrong_shape_names_key_and_both_shapes(tmp_path, unet):
    targets = lora_targets(unet)
    factors = random_factors(targets, 4, 0)
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    factors[module] = (torch.zeros(4, 48), torch.zeros(32, 4))  # cross-attention dim 48 instead of 32
    path = write_peft(tmp_path / "shape.safetensors", factors)
    _refused_without_change(
        unet,
        path,
        r"shape\.safetensors' does not fit the target: '"
        + module.replace(".", r"\.")
        + r"' -> .*LoRA delta shape \(32, 48\), target weight shape \(32, 32\)",
    )


def test_other_family_is_refused(tmp_path, unet):
    """An SDXL-structured LoRA (kohya LDM names, as kohya's SDXL files have) on an SD1.5 UNet."""
    sdxl = tiny_unet(TINY_SDXL)
    from lcm_accel.lora_merge.keymap import NameTranslator, TargetIndex

    index = TargetIndex([n for n, _ in sdxl.named_parameters()])
    to_ldm = NameTranslator(index.layout)
    path = write_kohya(
        tmp_path / "xl.safetensors",
        random_factors(lora_targets(sdxl), 4, 0),
        alpha=4.0,
        names=lambda m: to_ldm.translate(m, "ldm"),
    )
    assert load_lora(path).format == "kohya"
    _refused_without_change(
        unet, path, r"xl\.safetensors' looks like a sdxl LoRA but the target UNet is sd15: first offending key"
    )


def test_unsupported_adapter_type(tmp_path, unet):
    path = tmp_path / "oft.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks": torch.zeros(2, 2)}, str(path))
    _refused_without_change(unet, path, r"oft\.safetensors': key .*oft_blocks.* does not support")


def test_incomplete_lycoris_module_names_file_and_key(tmp_path, unet):
    path = tmp_path / "loha.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.zeros(2, 2)}, str(path))
    _refused_without_change(
        unet,
        path,
        r"loha\.safetensors': module 'down_blocks_0_attentions_0_proj_in' is a loha "
        r"adapter without 'hada_w1_b'",
    )


def test_unmatched_keys_strict_and_lenient(tmp_path, unet):
    factors = random_factors(lora_targets(unet), 2, 0)
    factors["down_blocks.0.attentions.0.transformer_blocks.7.attn1.to_q"] = (torch.zeros(2, 32), torch.zeros(32, 2))
    path = write_peft(tmp_path / "extra.safetensors", factors)
    _refused_without_change(unet, path, r"extra\.safetensors': 1 UNet module\(s\) have no matching weight")
    patcher = LoraPatcher(unet)
    report = patcher.apply([(load_lora(path), 1.0)], strict=False)
    assert report.adapters[0].unmatched == ["down_blocks.0.attentions.0.transformer_blocks.7.attn1.to_q"]
    assert len(report.targets) == len(factors) - 1
    patcher.restore()


def test_text_encoder_keys_are_parsed_and_reported(tmp_path, unet):
    tensors = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(2, 16),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(16, 2),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(1.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 32, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 2, 1, 1),
    }
    path = tmp_path / "te.safetensors"
    save_file(tensors, str(path))
    lora = load_lora(path)
    te = lora.text_encoders["te1"]["text_model_encoder_layers_0_self_attn_q_proj"]
    assert te.alpha == 1.0 and te.rank == 2 and lora.text_encoder_flat_names
    assert lora.unet["down_blocks_0_attentions_0_proj_in"].alpha == 2.0  # missing alpha = rank
    patcher = LoraPatcher(unet)
    report = patcher.apply([(lora, 1.0)])
    assert report.adapters[0].text_encoder_modules == {"te1": 1}
    patcher.restore()


def test_sdxl_text_encoders_and_peft_prefixes():
    from lcm_accel.lora_merge import parse_lora

    z = lambda *s: torch.zeros(*s)  # noqa: E731
    lora = parse_lora(
        {
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": z(2, 8),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": z(8, 2),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": z(2, 8),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": z(8, 2),
        },
        "x.safetensors",
    )
    assert set(lora.text_encoders) == {"te1", "te2"} and not lora.unet
    styles = {
        "base_model.model.down_blocks.0.attentions.0.proj_in.lora_A.default.weight": "lora_B.default.weight",
        "unet.down_blocks.0.attentions.0.proj_in.lora.down.weight": "lora.up.weight",
        "unet.down_blocks.0.attentions.0.proj_in.lora_linear_layer.down.weight": "lora_linear_layer.up.weight",
    }
    for down_key, up_suffix in styles.items():
        up_key = (
            down_key.rsplit(".", 3)[0] + "." + up_suffix
            if "default" in down_key
            else down_key.replace(down_key.split("proj_in.")[1], up_suffix)
        )
        parsed = parse_lora({down_key: z(2, 8), up_key: z(8, 2)}, "y")
        assert list(parsed.unet) == ["down_blocks.0.attentions.0.proj_in"], (down_key, up_key, list(parsed.unet))
    proc = parse_lora(
        {
            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": z(2, 8),
            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": z(8, 2),
        },
        "z",
    )
    assert list(proc.unet) == ["mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"]
