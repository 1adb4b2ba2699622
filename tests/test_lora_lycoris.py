"""LyCORIS formats (LoHa, LoKr, DoRA, full diff, LoRA bias): parsed from files in kohya layout,
applied in place, compared with a float64 formula of ComfyUI's rules (and ComfyUI's own
calculate_weight when COMFYUI_PATH is set, peft's LoHa / LoKr layers otherwise), re-weighted and
restored bit-exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_lora_helpers import assert_unchanged, snapshot

from lcm_accel.lora_merge import LoraPatcher, LoraPatchError, load_lora
from lcm_accel.lora_merge.safetensors_io import LoraFileError

HERE = Path(__file__).parent


class Net(torch.nn.Module):
    """A linear (8 x 12) and a 3x3 conv (6 x 4) with biases: the shapes the cases patch."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(12, 8)
        self.conv = torch.nn.Conv2d(4, 6, 3)
        self.to(dtype)


def _r(g: torch.Generator, *shape: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def cases() -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """name -> (layer, {role: tensor}) for every format in scope; roles are the file's key suffixes."""
    g = torch.Generator().manual_seed(7)
    a = lambda v: torch.tensor(float(v))  # noqa: E731
    return {
        "loha": (
            "lin",
            {
                "hada_w1_a": _r(g, 8, 2),
                "hada_w1_b": _r(g, 2, 12),
                "hada_w2_a": _r(g, 8, 2),
                "hada_w2_b": _r(g, 2, 12),
                "alpha": a(1.5),
            },
        ),
        "loha_tucker": (
            "conv",
            {
                "hada_t1": _r(g, 2, 2, 3, 3),
                "hada_w1_a": _r(g, 2, 6),
                "hada_w1_b": _r(g, 2, 4),
                "hada_t2": _r(g, 2, 2, 3, 3),
                "hada_w2_a": _r(g, 2, 6),
                "hada_w2_b": _r(g, 2, 4),
                "alpha": a(3),
            },
        ),
        "lokr": ("lin", {"lokr_w1": _r(g, 2, 3), "lokr_w2_a": _r(g, 4, 2), "lokr_w2_b": _r(g, 2, 4), "alpha": a(4)}),
        "lokr_w1_decomposed": (
            "lin",
            {"lokr_w1_a": _r(g, 2, 1), "lokr_w1_b": _r(g, 1, 3), "lokr_w2": _r(g, 4, 4), "alpha": a(2)},
        ),
        "lokr_tucker": (
            "conv",
            {
                "lokr_w1_a": _r(g, 2, 1),
                "lokr_w1_b": _r(g, 1, 2),
                "lokr_t2": _r(g, 2, 2, 3, 3),
                "lokr_w2_a": _r(g, 2, 3),
                "lokr_w2_b": _r(g, 2, 2),
                "alpha": a(1),
            },
        ),
        "lokr_full": ("lin", {"lokr_w1": _r(g, 2, 3), "lokr_w2": _r(g, 4, 4), "alpha": a(7)}),
        "diff": ("conv", {"diff": _r(g, 6, 4, 3, 3, scale=0.05), "diff_b": _r(g, 6, scale=0.05)}),
        "lora_bias": (
            "lin",
            {"lora_down.weight": _r(g, 2, 12), "lora_up.weight": _r(g, 8, 2), "lora_up.bias": _r(g, 8), "alpha": a(1)},
        ),
        "dora": (
            "lin",
            {
                "lora_down.weight": _r(g, 2, 12),
                "lora_up.weight": _r(g, 8, 2),
                "alpha": a(2),
                "dora_scale": 1 + _r(g, 1, 12, scale=0.1),
            },
        ),
        "dora_rows": (
            "lin",
            {"lora_down.weight": _r(g, 2, 12), "lora_up.weight": _r(g, 8, 2), "dora_scale": 1 + _r(g, 8, 1, scale=0.1)},
        ),
        "dora_loha_conv": (
            "conv",
            {
                "hada_w1_a": _r(g, 6, 2),
                "hada_w1_b": _r(g, 2, 36),
                "hada_w2_a": _r(g, 6, 2),
                "hada_w2_b": _r(g, 2, 36),
                "alpha": a(2),
                "dora_scale": 1 + _r(g, 1, 4, 1, 1, scale=0.1),
            },
        ),
    }


def write_case(path: Path, layer: str, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({f"lora_unet_{layer}.{role}": t.contiguous() for role, t in tensors.items()}, str(path))
    return path


# ------------------------------------------------------------------ float64 reference (ComfyUI's rules)
def _tucker(t, wb, wa):
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def reference_delta(tensors: dict[str, torch.Tensor], shape: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    """(unscaled delta reshaped to `shape`, scale) in float64."""
    t = {k: v.double() for k, v in tensors.items()}
    alpha = float(t["alpha"]) if "alpha" in t else None
    if "hada_w1_a" in t:
        m = [
            _tucker(t[f"hada_t{i}"], t[f"hada_w{i}_b"], t[f"hada_w{i}_a"])
            if f"hada_t{i}" in t
            else t[f"hada_w{i}_a"] @ t[f"hada_w{i}_b"]
            for i in (1, 2)
        ]
        return (m[0] * m[1]).reshape(shape), (alpha / t["hada_w1_b"].shape[0] if alpha else 1.0)
    if any(k.startswith("lokr") for k in t):
        dim = None
        w1 = t.get("lokr_w1")
        if w1 is None:
            dim, w1 = t["lokr_w1_b"].shape[0], t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t.get("lokr_w2")
        if w2 is None:
            dim = t["lokr_w2_b"].shape[0]
            w2 = (
                _tucker(t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
                if "lokr_t2" in t
                else t["lokr_w2_a"] @ t["lokr_w2_b"]
            )
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        scale = alpha / dim if alpha is not None and dim else 1.0
        return torch.kron(w1.contiguous(), w2.contiguous()).reshape(shape), scale
    if "diff" in t:
        return t["diff"].reshape(shape), 1.0
    up, down = t["lora_up.weight"], t["lora_down.weight"]
    return (up.flatten(1) @ down.flatten(1)).reshape(shape), (alpha / down.shape[0] if alpha else 1.0)


def reference(weight: torch.Tensor, bias: torch.Tensor, tensors: dict, strength: float):
    """(weight, bias) after the patch, float64: additive, or ComfyUI's weight_decompose for DoRA."""
    w = weight.double()
    d, scale = reference_delta(tensors, tuple(w.shape))
    d = d * scale
    if "dora_scale" in tensors:
        m = tensors["dora_scale"].double()
        merged = w + d
        if m.shape[0] == w.shape[0]:  # one magnitude per output row: norm of the ORIGINAL rows
            norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        else:  # per input channel, over (out, kh, kw) of the merged weight
            norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
            norm = norm.reshape(w.shape[1], *[1] * (w.dim() - 1)).transpose(0, 1)
        merged = merged * (m / (norm + torch.finfo(torch.float32).eps))
        w_out = w + strength * (merged - w)
    else:
        w_out = w + strength * d
    b_out = bias.double()
    if "diff_b" in tensors:
        b_out = b_out + strength * tensors["diff_b"].double()
    if "lora_up.bias" in tensors:
        b_out = b_out + strength * scale * tensors["lora_up.bias"].double()
    return w_out, b_out


def _layer(net: Net, name: str) -> torch.nn.Module:
    return getattr(net, name)


@pytest.mark.parametrize("name", list(cases()))
def test_format_matches_formula_reweights_and_restores(tmp_path, name):
    layer, tensors = cases()[name]
    net = Net()
    snap = snapshot(net)
    lora = load_lora(write_case(tmp_path / f"{name}.safetensors", layer, tensors))
    mod = _layer(net, layer)
    w0, b0 = mod.weight.detach().clone(), mod.bias.detach().clone()
    patcher = LoraPatcher(net)
    for strength in (0.7, -0.4):
        if patcher.is_applied:
            patcher.reweight([strength])
        else:
            patcher.apply([(lora, strength)])
        w_ref, b_ref = reference(w0, b0, tensors, strength)
        torch.testing.assert_close(mod.weight.double(), w_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mod.bias.double(), b_ref, rtol=1e-5, atol=1e-6)
    patcher.restore()
    assert_unchanged(net, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_all_formats_mixed_with_a_lora_restore_bit_exactly(tmp_path, dtype):
    """Every additive format on one layer together with a plain LoRA, in fp16 / bf16, strong
    strengths: one apply equals the sum of the deltas, then re-weight, restore bit-exactly."""
    net = Net(dtype)
    snap = snapshot(net)
    chosen = ["loha", "lokr", "lokr_full", "lora_bias", "diff", "loha_tucker", "lokr_tucker"]
    loras = [load_lora(write_case(tmp_path / f"{n}.safetensors", *cases()[n])) for n in chosen]
    g = torch.Generator().manual_seed(3)
    plain = write_case(
        tmp_path / "plain.safetensors", "lin", {"lora_down.weight": _r(g, 4, 12), "lora_up.weight": _r(g, 8, 4)}
    )
    loras.append(load_lora(plain))
    weights = [1.5, -2.0, 0.5, 1.0, 3.0, -1.0, 2.0, 0.8]
    patcher = LoraPatcher(net)
    report = patcher.apply(list(zip(loras, weights)))
    assert set(report.targets) == {"lin.weight", "lin.bias", "conv.weight", "conv.bias"}
    expected = snap["lin.weight"][0].double()
    for n, w in zip(chosen + ["plain"], weights):
        layer, tensors = cases()[n] if n != "plain" else ("lin", load_file(str(plain)))
        if layer == "lin":
            if n == "plain":
                tensors = {k.split(".", 1)[1]: v for k, v in tensors.items()}
            d, scale = reference_delta(tensors, (8, 12))
            expected = expected + w * scale * d
    torch.testing.assert_close(net.lin.weight.double(), expected, rtol=2e-2, atol=2e-2)
    patcher.reweight([-w for w in weights])
    patcher.restore()
    assert_unchanged(net, snap)


def test_dora_is_exact_to_restore_and_alone_on_its_layer(tmp_path):
    net = Net(torch.bfloat16)
    snap = snapshot(net)
    dora = load_lora(write_case(tmp_path / "dora.safetensors", *cases()["dora"]))
    loha = load_lora(write_case(tmp_path / "loha.safetensors", *cases()["loha"]))
    patcher = LoraPatcher(net)
    patcher.apply([(dora, 1.0)])
    patcher.reweight([0.25])
    patcher.restore()
    assert_unchanged(net, snap)
    with pytest.raises(LoraPatchError, match=r"'lin' is DoRA and another adapter patches the same weight"):
        patcher.apply([(dora, 1.0), (loha, 1.0)])
    assert_unchanged(net, snap)


def test_rank_compresses_a_dense_delta_with_its_error(tmp_path):
    net = Net()
    w0 = net.lin.weight.detach().double().clone()
    layer, tensors = cases()["loha"]
    lora = load_lora(write_case(tmp_path / "loha.safetensors", layer, tensors))
    d, scale = reference_delta(tensors, (8, 12))
    s = torch.linalg.svdvals(d)
    expected_error = float((s[2:].square().sum() / s.square().sum()).sqrt())
    report = LoraPatcher(net).apply([(lora, 1.0)], rank=2)
    assert report.max_relative_error == pytest.approx(expected_error, rel=1e-4)
    got = (net.lin.weight.double() - w0) / scale
    u, sv, vh = torch.linalg.svd(d)
    best = (u[:, :2] * sv[:2]) @ vh[:2]
    torch.testing.assert_close(got, best, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "bad,match",
    [
        (
            {
                "hada_w1_a": torch.zeros(8, 2),
                "hada_w1_b": torch.zeros(2, 12),
                "hada_w2_a": torch.zeros(8, 3),
                "hada_w2_b": torch.zeros(2, 12),
            },
            r"bad\.safetensors': module 'lin' has loha factors of inconsistent shapes",
        ),
        (
            {"lokr_w1": torch.zeros(2, 3), "lokr_w2": torch.zeros(4, 5)},
            r"bad\.safetensors' does not fit the target: 'lin' -> 'lin\.weight': lokr delta of 8x15",
        ),
        ({"diff": torch.zeros(8, 12), "diff_b": torch.zeros(9)}, r"'lin' -> 'lin\.bias': bias delta of 9 elements"),
        ({"lokr_w1_a": torch.zeros(2, 1)}, r"bad\.safetensors': module 'lin' is a lokr adapter without 'lokr_w1'"),
        (
            {
                "lora_down.weight": torch.zeros(2, 12),
                "lora_up.weight": torch.zeros(8, 2),
                "dora_scale": torch.ones(1, 5),
            },
            r"'lin' -> 'lin\.weight': dora_scale of shape \(1, 5\)",
        ),
    ],
)
def test_bad_files_name_file_and_key_and_change_nothing(tmp_path, bad, match):
    net = Net()
    snap = snapshot(net)
    with pytest.raises((LoraFileError, LoraPatchError), match=match):
        LoraPatcher(net).apply([(load_lora(write_case(tmp_path / "bad.safetensors", "lin", bad)), 1.0)])
    assert_unchanged(net, snap)


def test_bias_on_a_layer_without_bias_is_refused(tmp_path):
    net = Net()
    net.lin = torch.nn.Linear(12, 8, bias=False)
    snap = snapshot(net)
    lora = load_lora(write_case(tmp_path / "b.safetensors", *cases()["lora_bias"]))
    with pytest.raises(LoraPatchError, match=r"'lin' -> 'lin\.bias'.*target layer has no bias"):
        LoraPatcher(net).apply([(lora, 1.0)])
    assert_unchanged(net, snap)


# ------------------------------------------------------------------ peft (LoHa, LoKr layers)
def test_loha_and_lokr_match_peft(tmp_path):
    """peft's LoHa / LoKr layers (random factors in peft's own shapes), merged, give the weights our
    patch gives from the same factors written as a kohya file. alpha = r, where peft's alpha / r
    and ComfyUI's LoKr rule (alpha ignored when no factor is decomposed) agree."""
    peft = pytest.importorskip("peft")

    for name, config in (
        ("loha", peft.LoHaConfig(r=2, alpha=3, target_modules=["lin", "conv"], init_weights=False)),
        ("lokr", peft.LoKrConfig(r=2, alpha=2, target_modules=["lin", "conv"], init_weights=False)),
    ):
        net = Net()
        ref = peft.get_peft_model(Net(), config)
        tensors = {}
        for layer in ("lin", "conv"):
            adapter = getattr(ref.base_model.model, layer)
            for role in adapter.adapter_layer_names:
                if "default" in getattr(adapter, role):
                    tensors[f"lora_unet_{layer}.{role}"] = getattr(adapter, role)["default"].detach().clone()
            tensors[f"lora_unet_{layer}.alpha"] = torch.tensor(float(config.alpha))
        merged = ref.merge_and_unload()
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        LoraPatcher(net).apply([(load_lora(tmp_path / f"{name}.safetensors"), 1.0)])
        for layer in ("lin", "conv"):
            torch.testing.assert_close(
                getattr(net, layer).weight, getattr(merged, layer).weight, rtol=1e-5, atol=1e-6, msg=f"{name} {layer}"
            )


# ------------------------------------------------------------------ ComfyUI's own calculate_weight
def test_matches_comfyui_calculate_weight(tmp_path):
    """Every case through ComfyUI's comfy.lora.load_lora + calculate_weight (its Python, on CPU)."""
    from comfyui_server import comfyui_checkout, comfyui_python

    checkout, why = comfyui_checkout()
    if checkout is None:
        pytest.skip(why)
    strength = 0.7
    net = Net()
    bundle, expected = {}, {}
    for name, (layer, tensors) in cases().items():
        mod = _layer(net, layer)
        bundle[f"{name}.weight"] = mod.weight.detach().clone()
        bundle[f"{name}.bias"] = mod.bias.detach().clone()
        for role, t in tensors.items():
            bundle[f"lora.{name}.{role}"] = t.contiguous()
        probe = Net()
        LoraPatcher(probe).apply([(load_lora(write_case(tmp_path / f"{name}.safetensors", layer, tensors)), strength)])
        expected[name] = (_layer(probe, layer).weight.detach(), _layer(probe, layer).bias.detach())
    save_file(bundle, str(tmp_path / "bundle.safetensors"))
    done = subprocess.run(
        [
            comfyui_python(checkout),
            str(HERE / "comfyui_lycoris_checks.py"),
            str(checkout),
            str(tmp_path / "bundle.safetensors"),
            str(tmp_path / "out.safetensors"),
            json.dumps({"strength": strength, "names": list(cases())}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    theirs = load_file(str(tmp_path / "out.safetensors"))
    for name, (w, b) in expected.items():
        if name == "lokr_tucker" and torch.equal(theirs[f"{name}.weight"], bundle[f"{name}.weight"]):
            continue  # ComfyUI's torch.kron of the strided einsum result raises on torch >= 2.13: it logs and skips
        torch.testing.assert_close(w, theirs[f"{name}.weight"], rtol=1e-5, atol=1e-6, msg=name)
        if name != "lora_bias":  # ComfyUI 0.3.64 does not load LoRA up biases (it logs them as not loaded)
            torch.testing.assert_close(b, theirs[f"{name}.bias"], rtol=1e-5, atol=1e-6, msg=name)


def test_unet_kohya_names_reach_weights_and_biases_in_both_namings(tmp_path):
    """A LyCORIS file with kohya names of either naming (diffusers or LDM module paths) patches an SD
    UNet's weights and the matching '.bias' parameters, through the same key map as plain LoRAs."""
    from test_lora_helpers import tiny_unet

    from lcm_accel.lora_merge import TargetIndex

    unet = tiny_unet()
    snap = snapshot(unet)
    params = dict(unet.named_parameters())
    index = TargetIndex(list(params))
    proj = "down_blocks.0.attentions.0.proj_in"
    ldm = index.layout and next(
        a for a, p in index.aliases.items() if p == proj + ".weight" and "input_blocks" in a and "_" in a
    )
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    out_f, in_f = params[q + ".weight"].shape
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"lora_unet_{ldm}.diff": _r(g, *params[proj + ".weight"].shape, scale=0.01),
        f"lora_unet_{ldm}.diff_b": _r(g, params[proj + ".bias"].numel(), scale=0.01),
        f"lora_unet_{q.replace('.', '_')}.lokr_w1": _r(g, 2, 2),
        f"lora_unet_{q.replace('.', '_')}.lokr_w2": _r(g, out_f // 2, in_f // 2, scale=0.01),
    }
    save_file(tensors, str(tmp_path / "lyco.safetensors"))
    lora = load_lora(tmp_path / "lyco.safetensors")
    assert lora.format == "kohya"
    patcher = LoraPatcher(unet)
    report = patcher.apply([(lora, 0.5)])
    assert set(report.targets) == {proj + ".weight", proj + ".bias", q + ".weight"}
    torch.testing.assert_close(
        params[proj + ".bias"].detach(), snap[proj + ".bias"][0] + 0.5 * tensors[f"lora_unet_{ldm}.diff_b"]
    )
    patcher.restore()
    assert_unchanged(unet, snap)


def test_part_delta_gives_each_additive_delta_for_a_host(tmp_path):
    """part_delta (for a host's own patch mechanism) equals the formula for every additive format,
    bias parts included; DoRA is refused as not additive."""
    from lcm_accel.lora_merge import BiasPart, part_delta, plan_targets

    net = Net()
    patcher = LoraPatcher(net)
    for name, (layer, tensors) in cases().items():
        lora = load_lora(write_case(tmp_path / f"{name}.safetensors", layer, tensors))
        plan, _ = plan_targets(patcher.index, patcher._params, [(lora, 1.0)])
        for target in plan:
            part = target.parts[0][1]
            shape = tuple(target.param.shape)
            if "dora_scale" in tensors and not isinstance(part, BiasPart):
                with pytest.raises(LoraPatchError, match="DoRA"):
                    part_delta(part, shape)
                continue
            w0 = torch.zeros(_layer(net, layer).weight.shape, dtype=torch.float64)
            w_ref, b_ref = reference(w0, torch.zeros(shape[0] if isinstance(part, BiasPart) else 1), tensors, 1.0)
            expected = b_ref if isinstance(part, BiasPart) else w_ref
            torch.testing.assert_close(part_delta(part, shape).double(), expected.reshape(shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dora_restore_state_stays_small(dtype):
    """DoRA's inverse (W' - s k D) / (1 - s + s k) misses the original by an ULP now and then: the
    encoded exceptions stay under 5% of the patched bytes for a delta ~3e-2 of the weights."""
    from lcm_accel.lora_merge import LoraFile
    from lcm_accel.lora_merge.lycoris import AdapterModule

    torch.manual_seed(0)
    net = torch.nn.Module()
    net.proj = torch.nn.Linear(256, 192, bias=False).to(dtype)
    snap = snapshot(net)
    up, down = torch.randn(192, 8), torch.randn(8, 256)
    scale = (3e-2 * net.proj.weight.float().std() / (up @ down).std()).sqrt()  # delta ~3e-2 of the weights
    up, down = up * scale, down * scale
    norm = (net.proj.weight.float() + up @ down).norm(dim=0, keepdim=True)
    module = AdapterModule("proj", "lora", {"down": down, "up": up}, 8.0, dora_scale=norm * 1.01, extra={"rank": 8})
    patcher = LoraPatcher(net)
    report = patcher.apply([(LoraFile("dora.safetensors", "kohya", {"proj": module}, False), 0.8)])
    assert report.restore_state_bytes < 0.05 * report.patched_weight_bytes
    patcher.restore()
    assert_unchanged(net, snap)
