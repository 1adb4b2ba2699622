"""LoRA on the standalone host: LoraLoader / LoraLoaderModelOnly nodes, lazy activation of a MODEL's
patch list on the shared UNet (apply / reweight / restore / nothing), and CLIP LoRA.

References: diffusers' unmerged LoRA (peft layers) on a copy of the same UNet / text encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from test_lora_helpers import (
    TINY_SD15,
    TINY_SDXL,
    assert_unchanged,
    diffusers_lora_unet,
    lora_targets,
    random_factors,
    snapshot,
    tiny_unet,
    write_kohya,
    write_peft,
)

from lcm_accel.hosts.standalone.nodes_lora import LoraLoader, LoraLoaderModelOnly
from lcm_accel.hosts.standalone.nodes_sampling import KSampler
from lcm_accel.lora_merge import LoraFileError, LoraPatchError, load_lora
from lcm_accel.runtime import lora_state as host_lora
from lcm_accel.runtime.lora_state import (
    LoraEntry,
    activate_clip_patches,
    activate_patches,
    add_clip_loras,
    add_loras,
    load_lora_file,
    patcher_of,
)
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
from lcm_accel.runtime.model_types import ClipHost, ModelHost

WEIGHTS = (0.8, 1.3)


@pytest.fixture(scope="module")
def loras_dir(tmp_path_factory):
    """models/loras with a kohya and a PEFT LoRA for TINY_SD15, one for SDXL, and a broken file."""
    root = tmp_path_factory.mktemp("lora_host")
    loras = root / "models" / "loras"
    targets = lora_targets(tiny_unet())
    write_kohya(loras / "style_kohya.safetensors", random_factors(targets, 4, 1), alpha=2.0)
    write_peft(loras / "lcm_peft.safetensors", random_factors(targets, 8, 2))
    write_kohya(loras / "xl" / "sdxl_style.safetensors", random_factors(lora_targets(tiny_unet(TINY_SDXL)), 4, 3), 4.0)
    (loras / "truncated.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    with use_model_paths(ModelPaths(root / "models")):
        yield loras


def _model() -> ModelHost:
    return ModelHost(unet=tiny_unet(), family="sd15")


def _forward(unet):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    c = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), c).sample


def _ksample(model, seed=1):
    g = torch.Generator().manual_seed(7)
    cond = [[torch.randn(1, 5, 32, generator=g), {"pooled_output": None}]]
    uncond = [[torch.randn(1, 5, 32, generator=g), {"pooled_output": None}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return KSampler().sample(model, seed, 2, 2.0, "euler", "normal", cond, uncond, latent, 1.0)[0]["samples"]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


class _Calls:
    """Counts the patcher's apply / reweight / restore calls on one UNet."""

    def __init__(self, monkeypatch, unet):
        patcher = patcher_of(unet)
        self.counts = {"apply": 0, "reweight": 0, "restore": 0}
        for name in self.counts:
            original = getattr(patcher, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(patcher, name, counted)


def test_model_only_then_ksampler_matches_diffusers(loras_dir):
    model = _model()
    base = _forward(model.unet)
    ref = diffusers_lora_unet(model.unet, [loras_dir / "lcm_peft.safetensors"], [0.7])
    (patched,) = LoraLoaderModelOnly().load_lora_model_only(model, "lcm_peft.safetensors", 0.7)
    assert patched is not model and patched.unet is model.unet and not model.patches
    assert torch.equal(_forward(model.unet), base)  # the node records, it does not patch
    got = _ksample(patched)
    expected = _ksample(ModelHost(unet=ref, family="sd15"))  # same pipeline, diffusers' LoRA UNet
    assert _rel(got, expected) < 1e-4
    expected_fwd = _forward(ref)
    assert _rel(expected_fwd, base) > 1e-2  # the LoRA really changes the output
    assert _rel(_forward(model.unet), expected_fwd) < 1e-5


def test_chained_loaders_are_one_combined_patch_equal_to_diffusers(loras_dir, monkeypatch):
    model = _model()
    names = ["style_kohya.safetensors", "lcm_peft.safetensors"]
    ref = diffusers_lora_unet(model.unet, [loras_dir / n for n in names], WEIGHTS)
    clip = None
    m = model
    for name, w in zip(names, WEIGHTS):
        m, clip = LoraLoader().load_lora(m, clip, name, w, 0.0)
    calls = _Calls(monkeypatch, model.unet)
    activate_patches(m)
    assert calls.counts == {"apply": 1, "reweight": 0, "restore": 0}
    report = patcher_of(model.unet)._report
    assert [a.weight for a in report.adapters] == list(WEIGHTS)  # both files in one apply
    assert _rel(_forward(model.unet), _forward(ref)) < 1e-5
    chained = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    # the same two files given at once (one add_loras call) give bit-identical weights
    other = _model()
    activate_patches(add_loras(other, [(load_lora_file(n), w) for n, w in zip(names, WEIGHTS)]))
    for n, p in other.unet.named_parameters():
        assert torch.equal(p, chained[n]), n


def test_clone_without_lora_sees_base_weights_and_back(loras_dir):
    model = _model()
    snap = snapshot(model.unet)
    base_out = _ksample(model)
    (with_lora,) = LoraLoaderModelOnly().load_lora_model_only(model, "lcm_peft.safetensors", 1.0)
    lora_out = _ksample(with_lora)
    assert _rel(lora_out, base_out) > 1e-3
    assert torch.equal(_ksample(model), base_out)  # the plain MODEL samples with the base weights
    assert_unchanged(model.unet, snap)  # bit-exact, same storage, same Parameter objects
    assert torch.equal(_ksample(with_lora), lora_out)


def test_seed_change_does_not_repatch_and_weight_change_reweights(loras_dir, monkeypatch):
    model = _model()
    (patched,) = LoraLoaderModelOnly().load_lora_model_only(model, "style_kohya.safetensors", 0.5)
    calls = _Calls(monkeypatch, model.unet)
    _ksample(patched, seed=1)
    _ksample(patched, seed=2)
    # the node run again (a re-executed graph) reads the cached file: still nothing to do
    (again,) = LoraLoaderModelOnly().load_lora_model_only(model, "style_kohya.safetensors", 0.5)
    _ksample(again, seed=3)
    assert calls.counts == {"apply": 1, "reweight": 0, "restore": 0}
    (stronger,) = LoraLoaderModelOnly().load_lora_model_only(model, "style_kohya.safetensors", -1.2)
    _ksample(stronger, seed=3)
    assert calls.counts == {"apply": 1, "reweight": 1, "restore": 0}
    ref = diffusers_lora_unet(tiny_unet(), [loras_dir / "style_kohya.safetensors"], [-1.2])
    assert _rel(_forward(model.unet), _forward(ref)) < 1e-5
    _ksample(model)
    assert calls.counts["restore"] == 1


def test_same_file_twice_is_one_adapter_with_summed_weight(loras_dir):
    model = _model()
    m, _ = LoraLoader().load_lora(model, None, "lcm_peft.safetensors", 0.5, 0.0)
    m, _ = LoraLoader().load_lora(m, None, "lcm_peft.safetensors", 0.25, 0.0)
    activate_patches(m)
    assert [a.weight for a in patcher_of(model.unet)._report.adapters] == [0.75]
    activate_patches(model)
    ref = diffusers_lora_unet(model.unet, [loras_dir / "lcm_peft.safetensors"], [0.75])
    assert _rel(_forward(ref), _forward(model.unet)) > 1e-3
    activate_patches(m)
    assert _rel(_forward(model.unet), _forward(ref)) < 1e-5


def test_rank_applies_to_the_combined_patch_and_conflicts_are_refused(loras_dir):
    model = _model()
    kohya, peft = load_lora_file("style_kohya.safetensors"), load_lora_file("lcm_peft.safetensors")
    m = add_loras(add_loras(model, [(kohya, 0.8)]), [(peft, 1.0)], rank=3)
    activate_patches(m)
    report = patcher_of(model.unet)._report
    assert report.rank == 3 and len(report.adapters) == 2
    with pytest.raises(LoraPatchError, match=r"lcm_peft.safetensors' rank 3.*style_kohya.safetensors' rank 5"):
        add_loras(m, [(kohya, 0.3)], rank=5)


def test_strength_zero_returns_the_inputs(loras_dir):
    model, clip = _model(), object()
    assert LoraLoader().load_lora(model, clip, "lcm_peft.safetensors", 0.0, 0.0) == (model, clip)
    assert LoraLoaderModelOnly().load_lora_model_only(model, "lcm_peft.safetensors", 0.0)[0] is model
    # a UNet-only LoRA (like LCM-LoRA) with a clip strength leaves the CLIP's patch list empty
    clip = ClipHost(tokenizer=None, text_encoders=[_text_encoder(False)], family="sd15")
    m, c = LoraLoader().load_lora(model, clip, "lcm_peft.safetensors", 1.0, 1.0)
    assert len(m.patches) == 1 and c.patches == []


def test_node_input_types_match_comfyui(loras_dir):
    spec = LoraLoader.INPUT_TYPES()["required"]
    assert list(spec) == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    assert spec["lora_name"][0] == [
        "lcm_peft.safetensors",
        "style_kohya.safetensors",
        "truncated.safetensors",
        "xl/sdxl_style.safetensors",
    ]
    for key in ("strength_model", "strength_clip"):
        assert spec[key][0] == "FLOAT"
        assert {k: spec[key][1][k] for k in ("default", "min", "max", "step")} == {
            "default": 1.0,
            "min": -100.0,
            "max": 100.0,
            "step": 0.01,
        }
    assert LoraLoader.RETURN_TYPES == ("MODEL", "CLIP") and LoraLoaderModelOnly.RETURN_TYPES == ("MODEL",)
    only = LoraLoaderModelOnly.INPUT_TYPES()["required"]
    assert list(only) == ["model", "lora_name", "strength_model"]
    assert only["strength_model"] == ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})
    assert only["lora_name"][0] == spec["lora_name"][0]


@pytest.mark.parametrize(
    "bad, error", [("xl/sdxl_style.safetensors", LoraPatchError), ("truncated.safetensors", LoraFileError)]
)
def test_bad_file_fails_at_the_node_and_leaves_weights_bit_identical(loras_dir, bad, error):
    model = _model()
    (patched,) = LoraLoaderModelOnly().load_lora_model_only(model, "lcm_peft.safetensors", 1.0)
    activate_patches(patched)  # the UNet currently holds a patch: it must stay exactly so
    snap = snapshot(model.unet)
    with pytest.raises(error, match=bad.split("/")[-1]):
        LoraLoaderModelOnly().load_lora_model_only(patched, bad, 1.0)
    assert_unchanged(model.unet, snap)


def test_failed_activation_names_the_file_and_changes_nothing(loras_dir):
    """A MODEL whose patch list bypassed the node check still fails atomically at the sampler."""
    model = _model()
    (patched,) = LoraLoaderModelOnly().load_lora_model_only(model, "lcm_peft.safetensors", 1.0)
    activate_patches(patched)
    snap = snapshot(model.unet)
    wrong = patched.clone()
    wrong.patches.append(LoraEntry(load_lora(loras_dir / "xl" / "sdxl_style.safetensors"), 1.0))
    with pytest.raises(LoraPatchError, match="sdxl_style.safetensors"):
        _ksample(wrong)
    assert_unchanged(model.unet, snap)
    activate_patches(patched)  # still known as applied: nothing to redo
    assert_unchanged(model.unet, snap)


def test_lora_files_are_cached_by_path_and_mtime(loras_dir):
    import os

    first = load_lora_file("lcm_peft.safetensors")
    assert load_lora_file("lcm_peft.safetensors") is first
    path = loras_dir / "lcm_peft.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_lora_file("lcm_peft.safetensors") is not first
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lora_file("missing.safetensors")
    with pytest.raises(ValueError, match="outside"):
        load_lora_file("../loras/lcm_peft.safetensors")


# --------------------------------------------------------------------------- CLIP
def _text_encoder(projection: bool, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=32,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _te_factors(encoder, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random factors for every attention / MLP linear, keyed by the HF-v4 module path (with `text_model.`)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in encoder.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
            path = name if name.startswith("text_model.") else "text_model." + name
            out[path] = (
                torch.randn(4, module.in_features, generator=g) * 0.2,
                torch.randn(module.out_features, 4, generator=g) * 0.2,
            )
    return out


def _te_forward(encoder):
    ids = torch.arange(16).reshape(1, 16) % 60
    with torch.no_grad():
        return encoder(input_ids=ids).last_hidden_state


def _diffusers_text_encoder(encoder, path, prefix, weight):
    from diffusers import StableDiffusionXLPipeline

    ref = copy.deepcopy(encoder)
    sd, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path))
    StableDiffusionXLPipeline.load_lora_into_text_encoder(sd, alphas, ref, prefix=prefix, adapter_name="a")
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    set_weights_and_activate_adapters(ref, ["a"], [weight])
    return ref


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_clip_lora_matches_diffusers_text_encoders(tmp_path, layout):
    te1, te2 = _text_encoder(False, 0), _text_encoder(True, 1)  # CLIPTextModel has no `text_model.` level in v5
    tensors = {}
    for encoder, (kohya, diffusers) in zip(
        (te1, te2), (("lora_te1_", "text_encoder."), ("lora_te2_", "text_encoder_2."))
    ):
        for module, (down, up) in _te_factors(encoder, seed=len(tensors)).items():
            if layout == "kohya":
                key = kohya + module.replace(".", "_")
                tensors.update(
                    {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)}
                )
            else:
                tensors.update({f"{diffusers}{module}.lora_A.weight": down, f"{diffusers}{module}.lora_B.weight": up})
    path = tmp_path / "te.safetensors"
    save_file(tensors, str(path))
    refs = [
        _diffusers_text_encoder(te1, path, "text_encoder", 0.6),
        _diffusers_text_encoder(te2, path, "text_encoder_2", 0.6),
    ]
    clip = ClipHost(tokenizer=None, text_encoders=[te1, te2], family="sdxl")
    bases = [_te_forward(e) for e in (te1, te2)]
    snaps = [snapshot(e) for e in (te1, te2)]
    patched = add_clip_loras(clip, [(load_lora(path), 0.6)])
    assert all(torch.equal(_te_forward(e), b) for e, b in zip((te1, te2), bases))  # recorded, not applied
    activate_clip_patches(patched)
    for encoder, ref, base in zip((te1, te2), refs, bases):
        expected = _te_forward(ref)
        assert _rel(expected, base) > 1e-2
        assert _rel(_te_forward(encoder), expected) < 1e-5
    activate_clip_patches(clip)  # back to the plain CLIP: base weights, bit-exact
    for encoder, snap in zip((te1, te2), snaps):
        assert_unchanged(encoder, snap)


def test_clip_lora_for_missing_encoder_is_refused(tmp_path):
    te1 = _text_encoder(False)
    tensors = {}
    for module, (down, up) in _te_factors(_text_encoder(True), seed=1).items():
        key = "lora_te2_" + module.replace(".", "_")
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up})
    path = tmp_path / "xl_te.safetensors"
    save_file(tensors, str(path))
    clip = ClipHost(tokenizer=None, text_encoders=[te1], family="sd15")
    snap = snapshot(te1)
    with pytest.raises(LoraPatchError, match=r"xl_te.safetensors.*'te2'"):
        add_clip_loras(clip, [(load_lora(path), 1.0)])
    assert_unchanged(te1, snap)


def test_patch_state_lives_on_the_shared_module():
    unet = tiny_unet(TINY_SD15)
    model = ModelHost(unet=unet, family="sd15")
    activate_patches(model)  # nothing recorded, never patched: no patcher is even created
    assert not host_lora.has_lora_state(unet)
    assert patcher_of(unet) is patcher_of(unet)
