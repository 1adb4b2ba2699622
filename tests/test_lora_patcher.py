"""The in-place patcher: bit-exact restore after any sequence of apply / re-weight / restore,
same storage and Parameter objects throughout, atomic on errors and Ctrl-C, small restore state."""

from __future__ import annotations

import random

import pytest
import torch
from test_lora_helpers import assert_unchanged, lora_targets, random_factors, snapshot, tiny_unet, write_kohya

from lcm_accel.lora_merge import LoraFactors, LoraFile, LoraPatcher, LoraPatchError, load_lora
from lcm_accel.lora_merge import patcher as patcher_module


class SmallNet(torch.nn.Module):
    """Diffusers-named stand-in with a few small linear and conv weights (fast property tests)."""

    def __init__(self, dtype):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(4, 8, 3)
        self.lin = torch.nn.ModuleDict({"a": torch.nn.Linear(24, 40), "b": torch.nn.Linear(40, 16)})
        self.conv = torch.nn.Conv2d(8, 12, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.03)
        self.to(dtype)


def _small_lora(seed: int, rank: int, scale: float) -> LoraFile:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * scale  # noqa: E731
    unet = {
        "lin.a": LoraFactors("lin.a", r(rank, 24), r(40, rank), float(rank) / 2),
        "lin.b": LoraFactors("lin.b", r(rank, 40), r(16, rank), float(rank)),
        "conv": LoraFactors("conv", r(rank, 8, 3, 3), r(12, rank, 1, 1), 1.0),
    }
    return LoraFile(path=f"small{seed}.safetensors", format="kohya", unet=unet, flat_names=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_random_sequences_restore_bit_exactly(dtype):
    """70 seeded random sequences per dtype (210 in all) of apply / re-weight / restore, each
    ending with restore: the weights are bit-identical, in the same storage, every time."""
    rng = random.Random(1234)
    net = SmallNet(dtype)
    snap = snapshot(net)
    loras = [_small_lora(s, rank, scale) for s, rank, scale in ((1, 4, 0.1), (2, 2, 0.5), (3, 8, 0.02))]
    patcher = LoraPatcher(net)
    for _ in range(70):
        for _ in range(rng.randint(1, 6)):
            op = rng.choice(["apply", "apply", "reweight", "reweight", "restore"])
            if op == "apply":
                chosen = rng.sample(loras, rng.randint(1, 3))
                patcher.apply([(lora, rng.uniform(-2, 2)) for lora in chosen], rank=rng.choice([None, None, 1, 3]))
                assert any(not torch.equal(p, snap[n][0]) for n, p in net.named_parameters())
            elif op == "reweight" and patcher.is_applied:
                patcher.reweight([rng.uniform(-2, 2) for _ in patcher.weights])
            else:
                patcher.restore()
        patcher.restore()
        assert_unchanged(net, snap)


def test_apply_twice_equals_apply_once_and_keeps_storage():
    net = SmallNet(torch.float16)
    snap = snapshot(net)
    lora = _small_lora(1, 4, 0.1)
    patcher = LoraPatcher(net)
    patcher.apply([(lora, 0.8)])
    once = {n: p.detach().clone() for n, p in net.named_parameters()}
    patcher.apply([(lora, 0.8)])
    for n, p in net.named_parameters():
        assert torch.equal(p, once[n]), n
        assert p.data_ptr() == snap[n][1] and p is snap[n][2]
    patcher.restore()
    assert_unchanged(net, snap)


def test_patch_equals_reference_delta():
    net = SmallNet(torch.float32)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    a, b = _small_lora(1, 4, 0.1), _small_lora(2, 2, 0.5)
    LoraPatcher(net).apply([(a, 0.5), (b, -1.5)])
    for name in ("lin.a", "lin.b", "conv"):
        expected = before[name + ".weight"] + 0.5 * a.unet[name].delta() - 1.5 * b.unet[name].delta()
        assert torch.allclose(dict(net.named_parameters())[name + ".weight"], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("when", ["apply", "reweight"])
def test_interrupt_mid_way_puts_weights_back(monkeypatch, when):
    net = SmallNet(torch.bfloat16)
    lora = _small_lora(1, 4, 0.1)
    patcher = LoraPatcher(net)
    original = snapshot(net)
    if when == "reweight":
        patcher.apply([(lora, 1.0)])
    snap = snapshot(net)
    func = "patch_weight" if when == "apply" else "reweight_weight"
    real = getattr(patcher_module, func)
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(patcher_module, func, flaky)
    with pytest.raises(KeyboardInterrupt):
        if when == "apply":
            patcher.apply([(lora, 1.0)])
        else:
            patcher.reweight([0.3])
    monkeypatch.setattr(patcher_module, func, real)
    assert_unchanged(net, snap)
    if when == "reweight":  # still applied with the old weight, and restorable
        patcher.restore()
        assert_unchanged(net, original)


def test_interrupt_inside_one_weight_undoes_its_chunks(monkeypatch):
    monkeypatch.setattr(patcher_module, "CHUNK_ELEMENTS", 48)  # several chunks per weight
    net = SmallNet(torch.float16)
    snap = snapshot(net)
    weight = net.lin.a.weight
    patch = LoraPatcher(net)._mixed  # noqa: F841  (exercise the same path as apply)
    lora = _small_lora(1, 4, 0.1)
    from lcm_accel.lora_merge.mix import mix_cat

    p = mix_cat([(lora.unet["lin.a"], 1.0)])
    p.shape = tuple(weight.shape)
    real_copy = torch.Tensor.copy_
    count = {"n": 0}

    def copy_then_fail(self, src, *a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return real_copy(self, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        patcher_module.patch_weight(weight.data, p)
    monkeypatch.setattr(torch.Tensor, "copy_", real_copy)
    assert count["n"] >= 3
    assert_unchanged(net, snap)


def test_validation_happens_before_any_write():
    net = SmallNet(torch.float32)
    snap = snapshot(net)
    good = _small_lora(1, 4, 0.1)
    bad = _small_lora(2, 2, 0.1)
    bad.unet["lin.b"] = LoraFactors("lin.b", torch.zeros(2, 41), torch.zeros(16, 2), 2.0)
    with pytest.raises(
        LoraPatchError,
        match=r"'lin\.b' -> 'lin\.b\.weight': LoRA delta shape \(16, 41\), target weight shape \(16, 40\)",
    ):
        LoraPatcher(net).apply([(good, 1.0), (bad, 1.0)])
    nan = _small_lora(3, 2, 0.1)
    nan.unet["conv"].up[0, 0] = float("nan")
    with pytest.raises(LoraPatchError, match="NaN"):
        LoraPatcher(net).apply([(good, 1.0), (nan, 1.0)])
    with pytest.raises(LoraPatchError, match="finite"):
        LoraPatcher(net).apply([(good, float("inf"))])
    assert_unchanged(net, snap)
    net.conv.weight.requires_grad_(False)
    net.conv.weight.data = net.conv.weight.data.to(torch.int8)  # e.g. a quantised layer
    snap = snapshot(net)
    with pytest.raises(LoraPatchError, match=r"'conv\.weight' has dtype torch\.int8"):
        LoraPatcher(net).apply([(good, 1.0)])
    assert_unchanged(net, snap)


def test_progress_callback_and_report(tmp_path):
    unet = tiny_unet()
    path = write_kohya(tmp_path / "l.safetensors", random_factors(lora_targets(unet), 4, 0, scale=0.01), alpha=4.0)
    seen = []
    patcher = LoraPatcher(unet, progress=lambda done, total, name: seen.append((done, total, name)))
    report = patcher.apply([(load_lora(path), 1.0)])
    assert [d for d, _, _ in seen] == list(range(1, len(report.targets) + 1))
    assert {t for _, t, _ in seen} == {len(report.targets)}
    assert report.target_family == "sd15" and report.adapters[0].family == "sd15"
    assert 0 < report.restore_state_bytes < 0.05 * report.patched_weight_bytes
    assert "weights patched" in report.summary()
    patcher.restore()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_restore_state_is_small_for_realistic_magnitudes(dtype):
    """Weights ~N(0, 0.03), delta ~1e-3 of the weights: the sparse restore state stays far below 5%."""
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.conv_in = torch.nn.Conv2d(1, 1, 1)
    net.proj = torch.nn.Linear(512, 512)
    with torch.no_grad():
        net.proj.weight.normal_(0, 0.03)
    net.to(dtype)
    up, down = torch.randn(512, 32), torch.randn(32, 512)
    scale = (1e-3 * 0.03 / (up @ down).std()).sqrt().item()
    lora = LoraFile("real.safetensors", "peft", {"proj": LoraFactors("proj", down * scale, up * scale, 32.0)}, False)
    snap = snapshot(net)
    patcher = LoraPatcher(net)
    report = patcher.apply([(lora, 1.0)])
    assert report.restore_state_bytes < 0.02 * report.patched_weight_bytes
    patcher.restore()
    assert_unchanged(net, snap)


def _strong_lora(net: torch.nn.Module, relative: float, seed: int = 0) -> LoraFile:
    """A rank-16 LoRA on `net.proj` whose delta entries are ~`relative` times the weights' std."""
    g = torch.Generator().manual_seed(seed)
    w = net.proj.weight
    up, down = torch.randn(w.shape[0], 16, generator=g), torch.randn(16, w.shape[1], generator=g)
    scale = (relative * w.float().std() / (up @ down).std()).sqrt().item()
    return LoraFile("strong.safetensors", "peft", {"proj": LoraFactors("proj", down * scale, up * scale, 16.0)}, False)


def _uniform_net(dtype: torch.dtype, rows: int = 256, cols: int = 384) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.conv_in = torch.nn.Conv2d(1, 1, 1)
    net.proj = torch.nn.Linear(cols, rows)  # default init: uniform weights, like real layers
    return net.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("relative,limit", [(3e-2, 0.05), (1e-1, 0.10)])
def test_strong_deltas_restore_exactly_with_a_small_state(dtype, relative, limit):
    """The encoded exceptions (gap + ULP correction) stay within 5% of the patched bytes at relative
    delta 3e-2 and 10% at 1e-1, and restore bit-exactly, also after re-weighting."""
    net = _uniform_net(dtype)
    snap = snapshot(net)
    patcher = LoraPatcher(net)
    report = patcher.apply([(_strong_lora(net, relative), 1.0)])
    assert report.exceptions > 0
    assert report.restore_state_bytes <= limit * report.patched_weight_bytes
    patcher.reweight([-0.7])
    assert patcher.report.restore_state_bytes <= limit * report.patched_weight_bytes
    patcher.restore()
    assert_unchanged(net, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_reweight_equals_a_fresh_apply(dtype):
    """One pass per chunk (rebuild W, patch with the new delta) gives the same bits and state as
    restoring and applying again."""
    net = _uniform_net(dtype)
    lora = _strong_lora(net, 1e-1)
    patcher = LoraPatcher(net)
    patcher.apply([(lora, 0.3)])
    patcher.reweight([1.2])
    reweighted = net.proj.weight.detach().clone()
    state = patcher._states["proj.weight"]
    patcher.restore()
    fresh = LoraPatcher(net)
    fresh.apply([(lora, 1.2)])
    assert torch.equal(net.proj.weight.view(torch.uint8), reweighted.view(torch.uint8))
    other = fresh._states["proj.weight"]
    assert state.checksum == other.checksum and state.exceptions == other.exceptions
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            (state.code.gaps, state.code.corrections, state.code.escapes),
            (other.code.gaps, other.code.corrections, other.code.escapes),
        )
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_exception_code_round_trip_with_long_gaps_and_escapes(dtype):
    """Gaps past 255 and 65535 (filler entries), corrections of +-1 ULP and escapes (a sign change,
    a jump of many ULPs) all decode to the original bits."""
    from lcm_accel.lora_merge.exceptions import decode, encode

    n = 200_000
    original = torch.randn(n).to(dtype)
    back = original.clone()
    index = torch.tensor([0, 1, 7, 300, 301, 70_000, 70_001, 199_999])
    bits = patcher_module._bits
    b = bits(back)
    b[index[:4]] += torch.tensor([1, -1, 2, -3], dtype=b.dtype)
    back[300:302] = -back[300:302]  # sign changes: escapes
    back[70_000] = back[70_000] * 1000  # many ULPs away: escape
    b[index[6:]] -= 1
    code = encode(index, bits(original)[index], bits(back)[index])
    assert code.count == index.numel() and code.escapes.numel() == 3
    assert code.gaps.numel() > index.numel()  # fillers bridged the long gaps
    decoded = decode(code, torch.device("cpu"))
    assert torch.equal(decoded.positions, index)
    fixed = bits(back).clone()
    decoded.fix(fixed, 0, index.numel(), 0)
    assert torch.equal(fixed, bits(original))
    rebuilt = bits(back).clone()  # chunk by chunk, as a restore does
    for lo, hi, offset in ((0, 3, 0), (3, 5, 100), (5, 8, 60_000)):
        chunk = rebuilt[offset:]
        decoded.fix(chunk, lo, hi, offset)
    assert torch.equal(rebuilt, bits(original))


def test_state_lives_in_host_memory_for_accelerator_weights(monkeypatch):
    """A weight not on the CPU keeps its encoded state in host memory (pinned when CUDA is there);
    the same path is forced here on CPU weights with state_on_host=True."""
    assert patcher_module._state_on_host(torch.empty(1, device="meta"), None)
    assert not patcher_module._state_on_host(torch.empty(1), None)
    assert not patcher_module._state_on_host(torch.empty(1, device="meta"), False)
    net = _uniform_net(torch.float16)
    snap = snapshot(net)
    patcher = LoraPatcher(net, state_on_host=True)
    patcher.apply([(_strong_lora(net, 3e-2), 1.0)])
    code = patcher._states["proj.weight"].code
    assert all(t.device.type == "cpu" for t in (code.gaps, code.corrections, code.escapes))
    assert code.gaps.is_pinned() == torch.cuda.is_available()
    patcher.reweight([0.5])
    patcher.restore()
    assert_unchanged(net, snap)


def test_params_argument_and_forget():
    """`params` patches the given {name: Parameter} (here a stand-in for a swapped layer) instead of
    module.named_parameters(); forget() drops the state without touching a weight."""
    net = _uniform_net(torch.float16)
    swapped = torch.nn.Parameter(net.proj.weight.detach().clone() * 2, requires_grad=False)
    params = dict(net.named_parameters(), **{"proj.weight": swapped})
    before, original = swapped.detach().clone(), net.proj.weight.detach().clone()
    patcher = LoraPatcher(net, params=params)
    patcher.apply([(_strong_lora(net, 1e-2), 1.0)])
    assert not torch.equal(swapped, before) and torch.equal(net.proj.weight, original)
    patched = swapped.detach().clone()
    patcher.forget()
    assert not patcher.is_applied and patcher.restore_state_bytes == 0 and patcher.weights == []
    patcher.restore()  # nothing to do: the weights stay as they are
    assert torch.equal(swapped, patched)


def test_interrupt_inside_one_weight_during_reweight(monkeypatch):
    """An interrupted fused re-weight puts the chunks it did back to the old patch."""
    monkeypatch.setattr(patcher_module, "CHUNK_ELEMENTS", 3000)  # several chunks per weight
    net = _uniform_net(torch.bfloat16)
    original = snapshot(net)
    patcher = LoraPatcher(net)
    patcher.apply([(_strong_lora(net, 1e-1), 1.0)])
    snap = snapshot(net)
    real_copy = torch.Tensor.copy_
    count = {"n": 0}

    def copy_then_fail(self, src, *a, **k):
        count["n"] += 1
        if count["n"] == 20:
            raise KeyboardInterrupt
        return real_copy(self, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        patcher.reweight([-0.4])
    monkeypatch.setattr(torch.Tensor, "copy_", real_copy)
    assert_unchanged(net, snap)
    patcher.restore()
    assert_unchanged(net, original)
