"""Quantization formats and layers: quantize -> dequantize stays within each format's documented
bound, int4 packing round-trips, quantized layers compute what the float layer computes with the
dequantized weight and hold no float weight, and the fp8 `_scaled_mm` path matches its reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lcm_accel.quantize import QuantConv2d, QuantLinear, dequantize, error_bound, quantize
from lcm_accel.quantize import modules as quant_modules
from lcm_accel.quantize.formats import FP8_MAX, INT8_MAX, pack_int4, unpack_int4

SHAPES = [(64, 40), (32, 16, 3, 3), (7, 100), (320, 320, 1, 1), (1, 5)]


def _weights(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w.view(shape[0], -1)[0, 0] = 1.5  # an outlier in the first row
    if shape[0] > 2:
        w[1] = 0.0  # an all-zero output channel
    return w


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    "fmt,group_size,symmetric",
    [("int8", 64, True), ("fp8_e4m3", 64, True), ("int4", 64, True), ("int4", 32, False), ("int4", 128, True)],
)
def test_dequantize_error_within_the_format_bound(shape, fmt, group_size, symmetric):
    w = _weights(shape)
    q = quantize(w, fmt, group_size, symmetric)
    back = dequantize(q)
    assert back.shape == w.shape and back.dtype == torch.float32
    err = (w - back).abs()
    bound = error_bound(w, q)
    assert torch.all(err <= bound * (1 + 1e-5) + 1e-12), float((err - bound).max())
    if shape[0] > 2:
        assert torch.all(back[1] == 0)  # zeros stay zeros
    if w.numel() >= 1000:  # padding and scales dominate only for tiny tensors
        assert q.nbytes < w.numel() * 4


def test_int8_and_fp8_use_the_full_range_per_channel():
    w = _weights((16, 48))
    q8 = quantize(w, "int8")
    assert torch.equal(
        q8.data.abs().amax(dim=1)[w.abs().amax(dim=1) > 0], torch.full((15,), INT8_MAX, dtype=torch.int8)
    )
    qf = quantize(w, "fp8_e4m3")
    assert torch.allclose(qf.data.float().abs().amax(dim=1)[2:], torch.full((14,), FP8_MAX))
    torch.testing.assert_close(qf.scales, w.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX)


def test_int4_packs_two_nibbles_per_byte_and_round_trips():
    values = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_int4(values)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(packed[:, 0], values[:, 0] | (values[:, 1] << 4))
    assert torch.equal(unpack_int4(packed), values)
    q = quantize(_weights((8, 100)), "int4", 64)
    assert q.data.shape == (8, 64)  # K = 100 padded to 128, two values per byte
    assert q.scales.shape == (8, 2)


def test_given_scales_reproduce_the_computed_quantization():
    w = _weights((24, 72))
    for fmt in ("int8", "fp8_e4m3", "int4"):
        q = quantize(w, fmt, 24)
        again = quantize(w, fmt, 24, scales=q.scales)
        assert torch.equal(again.data.view(torch.uint8), q.data.view(torch.uint8))


@pytest.mark.parametrize("bad,match", [("int3", "unknown quantization format"), ("nf4", "int8, fp8_e4m3fn, int4")])
def test_unknown_format_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        quantize(torch.ones(4, 4), bad)


def test_odd_group_size_is_refused():
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.ones(4, 4), "int4", group_size=3)


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3", "int4"])
def test_quant_layers_compute_with_the_dequantized_weight_and_drop_the_float_one(fmt):
    torch.manual_seed(0)
    linear, conv = torch.nn.Linear(48, 32), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
    ql, qc = QuantLinear.from_linear(linear, fmt, 16), QuantConv2d.from_conv(conv, fmt, 16)
    assert "weight" not in dict(ql.named_parameters()) and "weight" not in dict(qc.named_parameters())
    x, image = torch.randn(3, 5, 48), torch.randn(2, 8, 9, 9)
    wl = dequantize(quantize(linear.weight, fmt, 16))
    wc = dequantize(quantize(conv.weight, fmt, 16))
    assert torch.equal(ql(x), F.linear(x, wl, linear.bias))
    assert torch.equal(qc(image), F.conv2d(image, wc, conv.bias, 2, 1))
    limit = {"int8": 0.02, "fp8_e4m3": 0.06, "int4": 0.25}[fmt]  # relative output error, loose
    for got, want in ((ql(x), linear(x)), (qc(image), conv(image))):
        assert float((got - want).norm() / want.norm()) < limit


def test_kept_source_is_re_quantized_after_an_in_place_change():
    linear = torch.nn.Linear(16, 16)
    layer = QuantLinear.from_linear(linear, "int8", keep_source=True)
    assert layer.weight is linear.weight
    x = torch.randn(2, 16)
    with torch.no_grad():
        linear.weight.mul_(2.0)  # what a LoRA patcher's copy_ does: same Parameter, new values
    assert torch.equal(layer(x), F.linear(x, dequantize(quantize(linear.weight, "int8")), linear.bias))


def test_fp8_scaled_mm_path_matches_its_reference(monkeypatch):
    """The CUDA fp8 path (here forced on CPU): activations quantized per row, per-channel weight scales."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = QuantLinear.from_linear(linear, "fp8_e4m3")
    x = torch.randn(4, 3, 64)
    monkeypatch.setattr(quant_modules, "FORCE_SCALED_MM", True)
    fast = layer(x)
    rows = x.reshape(-1, 64)
    x_scale = rows.abs().amax(dim=1, keepdim=True) / FP8_MAX
    x_q = (rows / x_scale).to(torch.float8_e4m3fn).float() * x_scale
    reference = (x_q @ dequantize(layer.quantized).t() + linear.bias).reshape(4, 3, 32)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fast, linear(x), atol=0.15)
