"""ControlNetLoader + ControlNetApplyAdvanced / ControlNetApply on the standalone host, without ComfyUI
(its own comparison is tests/test_core_nodes_controlnet_comfyui.py): both file layouts give the same network,
strength 0 and an empty range equal no ControlNet, the start / end range picks the right UNet calls,
controls chain, bad files and inputs name the node and the input, SDXL ControlNets run, and DeepCache
and fast mode step aside (said once) rather than ignore the ControlNet. ControlNetApply equals
ControlNetApplyAdvanced over the whole schedule on both conditionings (ComfyUI hands its ControlNet to a
negative without one), and leaves a negative with its own ControlNet alone.
"""

from __future__ import annotations

import logging

import pytest
import torch

from lcm_accel.fixtures import tiny_model
from lcm_accel.fixtures.tiny_controlnets import controlnet_for, write_controlnet
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
from lcm_accel.runtime.model_types import SD_NOISE_SCHEDULE, ModelHost

STEPS = 4


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """(models dir, MODEL, the ControlNetModel written, conditioning width) for the tiny SD1.5 model."""
    root = tmp_path_factory.mktemp("controlnet_sd15")
    tiny = tiny_model("sd15")
    net = controlnet_for(tiny.unet, seed=3)
    for layout in ("ldm", "diffusers"):
        write_controlnet(root / "controlnet" / f"control_{layout}.safetensors", net, layout)
    write_controlnet(root / "controlnet" / "control_fp16.pth.safetensors", net, "ldm", dtype=torch.float16)
    model = ModelHost(unet=tiny.unet, family="sd15", noise_schedule=dict(SD_NOISE_SCHEDULE))
    return root, model, net, tiny.unet.config.cross_attention_dim


def _load(root, name: str):
    with use_model_paths(ModelPaths(root)):
        return NODES["ControlNetLoader"]().load_controlnet(name)[0]


def _inputs(width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    positive = [[torch.randn(1, 77, width, generator=g), {}]]
    negative = [[torch.randn(1, 77, width, generator=g), {}]]
    hint = torch.rand(1, 40, 56, 3, generator=g)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=g)}
    return positive, negative, hint, latent


def _ksample(model, positive, negative, latent, cfg=4.0):
    return NODES["KSampler"]().sample(model, 5, STEPS, cfg, "euler", "normal", positive, negative, latent)[0]["samples"]


def test_both_layouts_load_the_same_network(sd15):
    root, _, net, width = sd15
    ldm, diffusers = _load(root, "control_ldm.safetensors"), _load(root, "control_diffusers.safetensors")
    assert (ldm.layout, diffusers.layout) == ("ldm", "diffusers")
    assert ldm.family == diffusers.family == "sd15" and ldm.hint_channels == 3
    original = net.state_dict()
    for loaded in (ldm, diffusers):
        state = loaded.model.state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in state)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, width, generator=g)
    hint, t = torch.rand(2, 3, 64, 64, generator=g), torch.tensor([500.0, 500.0])
    with torch.no_grad():
        outs = [m(x, t, context, hint, return_dict=False) for m in (net, ldm.model, diffusers.model)]
    for down, mid in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(down, outs[0][0], strict=True))
        assert torch.equal(mid, outs[0][1])
    assert float(outs[0][1].abs().max()) > 0  # the residuals are not zero


def test_ldm_mapping_inverts_the_fixture_writer_for_sdxl():
    from lcm_accel.fixtures.tiny_controlnets import controlnet_to_ldm
    from lcm_accel.runtime.controlnet_files import controlnet_layout, infer_controlnet_config

    net = controlnet_for(tiny_model("sdxl").unet)
    state = net.state_dict()
    layout, mapped = controlnet_layout(controlnet_to_ldm(state, net.config.layers_per_block), "sdxl.pth")
    assert layout == "ldm" and mapped.keys() == state.keys()
    family, config = infer_controlnet_config(mapped, "sdxl.pth")
    assert family == "sdxl" and config["addition_embed_type"] == "text_time"
    assert list(config["down_block_types"]) == list(net.config.down_block_types)


def test_strength_zero_and_an_empty_range_equal_no_controlnet(sd15):
    root, model, _, width = sd15
    positive, negative, hint, latent = _inputs(width)
    control = _load(root, "control_ldm.safetensors")
    apply = NODES["ControlNetApplyAdvanced"]().apply_controlnet
    assert apply(positive, negative, control, hint, 0.0, 0.0, 1.0) == (positive, negative)
    plain = _ksample(model, positive, negative, latent)
    with_control = _ksample(model, *apply(positive, negative, control, hint, 1.0, 0.0, 1.0), latent)
    assert float((with_control - plain).abs().max()) > 1e-3
    never = apply(positive, negative, control, hint, 1.0, 1.0, 1.0)  # starts at sigma 0: no step runs it
    assert torch.equal(_ksample(model, *never, latent), plain)


def test_the_range_picks_the_unet_calls_by_sigma(sd15, monkeypatch):
    from lcm_accel.hosts.standalone import controlnet
    from lcm_accel.hosts.standalone.denoiser import percent_to_sigma, sigma_table

    root, model, _, width = sd15
    positive, negative, hint, latent = _inputs(width)
    control = _load(root, "control_ldm.safetensors")
    seen = []
    original = controlnet.ControlRun.residuals

    def record(self, x_in, timestep, context, sigma, added):
        out = original(self, x_in, timestep, context, sigma, added)
        seen.append((sigma, out is not None))
        return out

    monkeypatch.setattr(controlnet.ControlRun, "residuals", record)
    start, end = 0.3, 0.7
    conds = NODES["ControlNetApplyAdvanced"]().apply_controlnet(positive, negative, control, hint, 1.0, start, end)
    _ksample(model, *conds, latent, cfg=1.0)
    table = sigma_table(model)
    highest, lowest = percent_to_sigma(table, start), percent_to_sigma(table, end)
    assert len(seen) == STEPS
    assert [active for _, active in seen] == [lowest <= s <= highest for s, _ in seen]
    assert any(active for _, active in seen) and not all(active for _, active in seen)


def test_chained_controls_add_and_both_conditionings_carry_them(sd15):
    from lcm_accel.hosts.standalone.controlnet import ControlRun

    root, _, _, width = sd15
    positive, negative, hint, _ = _inputs(width)
    ldm, diffusers = _load(root, "control_ldm.safetensors"), _load(root, "control_diffusers.safetensors")
    apply = NODES["ControlNetApplyAdvanced"]().apply_controlnet
    first = apply(positive, negative, ldm, hint, 0.6, 0.0, 1.0)
    second = apply(*first, diffusers, hint.flip(1), 0.3, 0.0, 1.0)
    assert second[0][0][1]["control"] is second[1][0][1]["control"]  # one control for both, as ComfyUI
    assert second[0][0][1]["control"].previous is first[0][0][1]["control"]
    assert "control" not in positive[0][1]  # the inputs are left as they were

    def residuals(control):
        run = ControlRun(control, lambda p: 1e9 if p <= 0 else 0.0, "positive conditioning", "sd15")
        g = torch.Generator().manual_seed(2)
        x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, width, generator=g)
        return run.residuals(x, torch.tensor([400.0]), context, 3.0, None)

    both, alone = residuals(second[0][0][1]["control"]), residuals(first[0][0][1]["control"])
    only_second = apply(positive, negative, diffusers, hint.flip(1), 0.3, 0.0, 1.0)[0][0][1]["control"]
    top = residuals(only_second)
    for a, b, c in zip(both[0] + [both[1]], alone[0] + [alone[1]], top[0] + [top[1]], strict=True):
        torch.testing.assert_close(a, b + c, rtol=1e-5, atol=1e-6)


def test_bad_files_and_inputs_name_the_node_and_input(sd15, tmp_path):
    from safetensors.torch import save_file

    root, model, _, width = sd15
    (tmp_path / "controlnet").mkdir()
    save_file(
        {"adapter.body.0.resnets.0.block1.weight": torch.zeros(1)}, str(tmp_path / "controlnet" / "t2i.safetensors")
    )
    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "controlnet" / "junk.safetensors"))
    (tmp_path / "controlnet" / "broken.safetensors").write_bytes(b"not a safetensors file")
    for name, words in (
        ("t2i.safetensors", "T2I-Adapter"),
        ("junk.safetensors", "not a ControlNet"),
        ("broken.safetensors", "not a readable safetensors file"),
    ):
        with pytest.raises(ValueError, match=f"ControlNetLoader: control_net_name '{name}'.*{words}"):
            _load(tmp_path, name)
    positive, negative, hint, latent = _inputs(width)
    control = _load(root, "control_ldm.safetensors")
    apply = NODES["ControlNetApplyAdvanced"]().apply_controlnet
    with pytest.raises(ValueError, match="ControlNetApplyAdvanced: image has 4 channels"):
        apply(positive, negative, control, torch.rand(1, 8, 8, 4), 1.0, 0.0, 1.0)
    with pytest.raises(TypeError, match="ControlNetApplyAdvanced: control_net must come from ControlNetLoader"):
        apply(positive, negative, "control.safetensors", hint, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="ControlNetApplyAdvanced: end_percent 1.5"):
        apply(positive, negative, control, hint, 1.0, 0.0, 1.5)
    xl = tiny_model("sdxl")
    xl_model = ModelHost(unet=xl.unet, family="sdxl", noise_schedule=dict(SD_NOISE_SCHEDULE))
    conds = apply(positive, negative, control, hint, 1.0, 0.0, 1.0)
    with pytest.raises(
        ValueError, match="ControlNetApplyAdvanced: the ControlNet 'control_ldm.safetensors' is for sd15"
    ):
        _ksample(xl_model, *conds, latent)


def test_sdxl_controlnet_runs_in_both_layouts(tmp_path):
    from lcm_accel.fixtures.tiny_models import randomize, sdxl_unet

    # SDXL's six size ids are embedded 256 wide in every SDXL model; ControlNet files carry no config
    unet = sdxl_unet((32, 64, 128), (64, 128), time_dim=256, sample_size=8).eval().requires_grad_(False)
    randomize(unet, torch.Generator().manual_seed(5))
    net = controlnet_for(unet, seed=4)
    for layout in ("ldm", "diffusers"):
        write_controlnet(tmp_path / "controlnet" / f"xl_{layout}.safetensors", net, layout)
    model = ModelHost(unet=unet, family="sdxl", noise_schedule=dict(SD_NOISE_SCHEDULE))
    width, pooled = unet.config.cross_attention_dim, 128
    positive, negative, hint, latent = _inputs(width)
    for conds in (positive, negative):
        conds[0][1]["pooled_output"] = torch.randn(1, pooled)
    plain = _ksample(model, positive, negative, latent)
    results = []
    for layout in ("ldm", "diffusers"):
        control = _load(tmp_path, f"xl_{layout}.safetensors")
        assert control.family == "sdxl"
        conds = NODES["ControlNetApplyAdvanced"]().apply_controlnet(positive, negative, control, hint, 0.8, 0.0, 1.0)
        results.append(_ksample(model, *conds, latent))
    assert torch.equal(results[0], results[1])
    assert float((results[0] - plain).abs().max()) > 1e-3


def test_deepcache_and_fast_mode_step_aside_once(sd15, caplog):
    from lcm_accel.feature_cache import DeepCacheSettings
    from lcm_accel.hosts.standalone.controlnet import DEEPCACHE_REFUSED, FAST_MODE_REFUSED, note_fast_mode
    from lcm_accel.hosts.standalone.deepcache import apply_deepcache
    from lcm_accel.runtime.fast_mode import forget_messages

    root, model, _, width = sd15
    positive, negative, hint, latent = _inputs(width)
    control = _load(root, "control_ldm.safetensors")
    conds = NODES["ControlNetApplyAdvanced"]().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
    expected = _ksample(model, *conds, latent)
    cached = apply_deepcache(model, DeepCacheSettings(interval=2))
    forget_messages()
    with caplog.at_level(logging.WARNING):
        first = _ksample(cached, *conds, latent)
        second = _ksample(cached, *conds, latent)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert sum(DEEPCACHE_REFUSED in r.getMessage() for r in caplog.records) == 1
    assert not note_fast_mode(positive, negative)
    with caplog.at_level(logging.WARNING):
        assert note_fast_mode(*conds)
    assert any(FAST_MODE_REFUSED in r.getMessage() for r in caplog.records)


def test_lcm_sampling_applies_the_controlnet(sd15):
    from lcm_accel.nodes import PACK_NODES

    root, model, _, width = sd15
    positive, negative, hint, latent = _inputs(width)
    control = _load(root, "control_diffusers.safetensors")
    node = PACK_NODES["LCMAccel_KSampler"]()
    sample = getattr(node, node.FUNCTION)
    plain = sample(model, 7, 3, 1.0, positive, negative, latent, 50, 0.0, 1.0)[0]["samples"]
    conds = NODES["ControlNetApplyAdvanced"]().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
    guided = sample(model, 7, 3, 1.0, *conds, latent, 50, 0.0, 1.0)[0]["samples"]
    assert float((guided - plain).abs().max()) > 1e-3


def test_old_controlnet_apply_is_the_advanced_one_on_both_conditionings(sd15):
    from lcm_accel.hosts.standalone.controlnet import with_uncond_controls

    root, model, _, width = sd15
    positive, negative, hint, latent = _inputs(width)
    control = _load(root, "control_ldm.safetensors")
    old = NODES["ControlNetApply"]().apply_controlnet
    (pos,) = old(positive, control, hint, 0.8)
    assert pos[0][1]["control_apply_to_uncond"] is True and positive[0][1] == {}
    both = NODES["ControlNetApplyAdvanced"]().apply_controlnet(positive, negative, control, hint, 0.8, 0.0, 1.0)
    assert both[0][0][1]["control_apply_to_uncond"] is False
    torch.testing.assert_close(_ksample(model, pos, negative, latent), _ksample(model, *both, latent), rtol=0, atol=0)
    assert old(positive, control, hint, 0.0) == (positive,)
    # a negative with its own ControlNet keeps it; one without gets the k-th control on entry k mod n
    (own,) = old(negative, control, hint, 0.5)
    assert with_uncond_controls(pos, own) is own
    (second,) = old([[positive[0][0], {}]], control, torch.rand(1, 8, 8, 3), 0.5)
    two = negative + [[negative[0][0] * 2, {"strength": 0.5}]]
    shared = with_uncond_controls(pos + second, two)
    assert shared[0][1]["control"] is pos[0][1]["control"] and shared[1][1]["control"] is second[0][1]["control"]
    shared = with_uncond_controls(pos + second, negative)
    assert shared[0][1]["control"] is second[0][1]["control"] and "control" not in negative[0][1]
    with pytest.raises(TypeError, match="ControlNetApply: conditioning is not a CONDITIONING"):
        old("text", control, hint, 1.0)
    with pytest.raises(ValueError, match="ControlNetApply: strength 11"):
        old(positive, control, hint, 11.0)
    with pytest.raises(ValueError, match="ControlNetApply: image has 4 channels"):
        old(positive, control, torch.rand(1, 8, 8, 4), 1.0)
