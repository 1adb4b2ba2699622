"""Model files headless (issue 27, models part): CLIPLoader / DualCLIPLoader on split text-encoder
files, and the SDXL refiner single-file checkpoint with its aesthetic-score conditioning.

A CLIP from split files must be the CLIP a checkpoint gives for the same weights (same embeddings,
exactly, through CLIPTextEncode, CLIPTextEncodeSDXL, CLIPSetLastLayer and LoraLoader); the refiner's
UNet gets ComfyUI's encode_adm input: pooled text + sinusoidal 256-wide (here: the fixture's width)
embeddings of height, width, crop_h, crop_w and the aesthetic score."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from lcm_accel.fixtures.tiny_loras import kohya_te_factors
from lcm_accel.fixtures.tiny_models import (
    build_tiny_sd15,
    build_tiny_sdxl,
    build_tiny_sdxl_refiner,
    ldm_state_dict,
    save_ldm_checkpoint,
    text_encoder_file_state,
    unet_to_ldm,
)
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.hosts.standalone.refiner_conds import is_refiner_unet, refiner_added_conds
from lcm_accel.runtime.checkpoint_config import CheckpointFormatError, detect_family
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
from lcm_accel.runtime.part_files import load_text_encoder_files


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny():
    return {
        "sd15": build_tiny_sd15(0, clip_vocab=True),
        "sdxl": build_tiny_sdxl(0, clip_vocab=True),
        "sdxl_refiner": build_tiny_sdxl_refiner(0, clip_vocab=True),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny):
    """checkpoints/tiny_*.safetensors; text_encoders/ and the legacy clip/ with the same encoders split
    out in the layouts people download; a kohya text-encoder LoRA for SD1.5."""
    root = tmp_path_factory.mktemp("models_part") / "models"
    for family, model in tiny.items():
        save_ldm_checkpoint(model, root / "checkpoints" / f"tiny_{family}.safetensors")
    files = {
        ("text_encoders", "clip_l.safetensors"): (tiny["sd15"].text_encoders[0], "transformers"),
        ("clip", "sd15_clip_l_ldm.safetensors"): (tiny["sd15"].text_encoders[0], "cond_stage_model.transformer."),
        ("text_encoders", "xl_clip_l.safetensors"): (tiny["sdxl"].text_encoders[0], "transformers"),
        ("text_encoders", "xl_clip_g.safetensors"): (tiny["sdxl"].text_encoders[1], "open_clip"),
        ("text_encoders", "xl_clip_g_ldm.safetensors"): (
            tiny["sdxl"].text_encoders[1],
            "conditioner.embedders.1.model.",
        ),
        ("text_encoders", "refiner_clip_g.safetensors"): (tiny["sdxl_refiner"].text_encoders[0], "open_clip"),
    }
    for (folder, name), (encoder, layout) in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        save_file(text_encoder_file_state(encoder, layout), str(root / folder / name))
    (root / "loras").mkdir()
    save_file(kohya_te_factors(tiny["sd15"].text_encoders[0], 4, seed=3), str(root / "loras" / "te.safetensors"))
    (root / "diffusion_models").mkdir()
    unet = unet_to_ldm(tiny["sdxl_refiner"].unet.state_dict(), 2)
    save_file({k: v.contiguous() for k, v in unet.items()}, str(root / "diffusion_models" / "refiner_unet.safetensors"))
    with use_model_paths(ModelPaths(root)):
        yield root


def _checkpoint(family: str):
    return NODES["CheckpointLoaderSimple"]().load_checkpoint(f"tiny_{family}.safetensors")


def _encode(clip, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    ((cond, extra),) = NODES["CLIPTextEncode"]().encode(clip, text)[0]
    return cond, extra["pooled_output"]


def _same(a, b) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


PROMPT = "a (red:1.3) house by the sea, [fog]"


def test_clip_loader_clip_l_is_the_sd15_checkpoint_clip(models):
    _, base, _ = _checkpoint("sd15")
    for name in ("clip_l.safetensors", "sd15_clip_l_ldm.safetensors"):  # models/text_encoders, models/clip
        (clip,) = NODES["CLIPLoader"]().load_clip(name, "stable_diffusion")
        assert clip.family == "sd15" and len(clip.text_encoders) == 1
        _same(_encode(clip, PROMPT), _encode(base, PROMPT))
        skip = NODES["CLIPSetLastLayer"]().set_last_layer
        _same(_encode(skip(clip, -2)[0], PROMPT), _encode(skip(base, -2)[0], PROMPT))
    assert "clip_l.safetensors" in NODES["CLIPLoader"].INPUT_TYPES()["required"]["clip_name"][0]


def test_clip_loader_clip_takes_lora_like_the_checkpoint_clip(models):
    model, base, _ = _checkpoint("sd15")
    (clip,) = NODES["CLIPLoader"]().load_clip("clip_l.safetensors", "stable_diffusion")
    lora = NODES["LoraLoader"]().load_lora
    _, patched_split = lora(model, clip, "te.safetensors", 1.0, 0.7)
    _, patched_base = lora(model, base, "te.safetensors", 1.0, 0.7)
    with_lora = _encode(patched_split, PROMPT)
    _same(with_lora, _encode(patched_base, PROMPT))
    assert not torch.equal(with_lora[0], _encode(clip, PROMPT)[0])
    _same(_encode(clip, PROMPT), _encode(base, PROMPT))  # the unpatched CLIP is back to its weights


def test_dual_clip_loader_sdxl_is_the_sdxl_checkpoint_clip_in_either_order(models):
    _, base, _ = _checkpoint("sdxl")
    encode_xl = NODES["CLIPTextEncodeSDXL"]().encode
    want = encode_xl(base, 1024, 1024, 0, 0, 1024, 1024, "a castle", "a red castle")[0][0][0]
    for pair in (
        ("xl_clip_l.safetensors", "xl_clip_g.safetensors"),
        ("xl_clip_g_ldm.safetensors", "xl_clip_l.safetensors"),
    ):
        (clip,) = NODES["DualCLIPLoader"]().load_clip(*pair, "sdxl")
        assert clip.family == "sdxl" and len(clip.text_encoders) == 2
        _same(_encode(clip, PROMPT), _encode(base, PROMPT))
        got = encode_xl(clip, 1024, 1024, 0, 0, 1024, 1024, "a castle", "a red castle")[0][0][0]
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_clip_loader_clip_g_is_the_refiner_checkpoint_clip(models):
    _, base, _ = _checkpoint("sdxl_refiner")
    (clip,) = NODES["CLIPLoader"]().load_clip("refiner_clip_g.safetensors", "stable_diffusion")
    assert clip.family == base.family == "sdxl_refiner"
    _same(_encode(clip, PROMPT), _encode(base, PROMPT))


def test_clip_loaders_refuse_what_they_cannot_run(models):
    with pytest.raises(ValueError, match=r"CLIPLoader: type 'sd3' .*standalone host.*'stable_diffusion'"):
        NODES["CLIPLoader"]().load_clip("clip_l.safetensors", "sd3")
    with pytest.raises(ValueError, match=r"DualCLIPLoader: type 'flux' .*standalone host.*'sdxl'"):
        NODES["DualCLIPLoader"]().load_clip("clip_l.safetensors", "xl_clip_g.safetensors", "flux")
    with pytest.raises(ValueError, match=r"CLIPLoader: type 'sdxl' is not one of"):
        NODES["CLIPLoader"]().load_clip("clip_l.safetensors", "sdxl")
    with pytest.raises(CheckpointFormatError, match=r"DualCLIPLoader: clip_name1 'clip_l.safetensors', clip_name2 "):
        NODES["DualCLIPLoader"]().load_clip("clip_l.safetensors", "xl_clip_l.safetensors", "sdxl")
    with pytest.raises(CheckpointFormatError, match=r"refiner_unet.safetensors: not a CLIP text encoder.*found "):
        load_text_encoder_files([models / "diffusion_models" / "refiner_unet.safetensors"], "stable_diffusion")


def test_refiner_checkpoint_loads_with_its_layout(models, tiny):
    model, clip, vae = _checkpoint("sdxl_refiner")
    assert (model.family, clip.family, vae.family) == ("sdxl_refiner",) * 3
    assert is_refiner_unet(model.unet) and not is_refiner_unet(_checkpoint("sdxl")[0].unet)
    want = tiny["sdxl_refiner"].unet.state_dict()
    got = model.unet.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert model.unet.config.projection_class_embeddings_input_dim == 128 + 5 * 8
    (unet_only,) = NODES["UNETLoader"]().load_unet("refiner_unet.safetensors", "default")
    assert unet_only.family == "sdxl_refiner" and is_refiner_unet(unet_only.unet)


def test_unknown_checkpoint_says_what_it_found(tiny):
    state = ldm_state_dict(tiny["sd15"])
    renamed = {k.replace("cond_stage_model.transformer.", "cond_stage_model.mystery."): v for k, v in state.items()}
    with pytest.raises(
        CheckpointFormatError,
        match=r"x\.safetensors: unknown model family.*found .*'cond_stage_model\.mystery\.text_model\.\*'",
    ):
        detect_family(renamed, "x.safetensors")
    assert detect_family(ldm_state_dict(tiny["sdxl_refiner"]), "r") == "sdxl_refiner"


def _sinusoid(value: float, dim: int) -> torch.Tensor:
    """ComfyUI's Timestep(dim) embedding of one number: cos half then sin half, max period 10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = value * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])


def test_refiner_text_encode_reaches_the_unet_add_embedding(models):
    model, clip, _ = _checkpoint("sdxl_refiner")
    conditioning = NODES["CLIPTextEncodeSDXLRefiner"]().encode(clip, 7.5, 640, 384, PROMPT)[0]
    entry = conditioning[0][1]
    added = refiner_added_conds(entry, 1, 64, 64, "cpu", torch.float32)
    assert added["time_ids"].tolist() == [[384.0, 640.0, 0.0, 0.0, 7.5]]  # height, width, crop_h, crop_w, ascore
    # what the add-embedding sees is ComfyUI's encode_adm: pooled ++ sinusoid of each value
    unet = model.unet
    dim = unet.config.addition_time_embed_dim
    adm = torch.cat([entry["pooled_output"][0]] + [_sinusoid(v, dim) for v in (384, 640, 0, 0, 7.5)])[None]
    seen = {}

    def keep_input(module, args, output) -> None:
        seen["adm"] = args[0]

    hook = unet.add_embedding.register_forward_hook(keep_input)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(400.0)
    try:
        out = unet(x, t, encoder_hidden_states=conditioning[0][0], added_cond_kwargs=added).sample
    finally:
        hook.remove()
    torch.testing.assert_close(seen["adm"], adm, rtol=1e-5, atol=1e-5)
    # defaults: the latent's size, no crop, aesthetic score 6 (positive) / 2.5 (negative)
    plain = {"pooled_output": entry["pooled_output"]}
    assert refiner_added_conds(plain, 2, 64, 96, "cpu", torch.float32)["time_ids"].tolist() == [[64, 96, 0, 0, 6.0]] * 2
    negative = refiner_added_conds(plain, 1, 64, 96, "cpu", torch.float32, "negative")
    assert negative["time_ids"].tolist() == [[64, 96, 0, 0, 2.5]]
    lower = refiner_added_conds({**entry, "aesthetic_score": 2.5}, 1, 64, 64, "cpu", torch.float32)
    other = unet(x, t, encoder_hidden_states=conditioning[0][0], added_cond_kwargs=lower).sample
    assert not torch.allclose(out, other)


def _denoiser_dispatches_refiner() -> bool:
    import inspect

    from lcm_accel.hosts.standalone import denoiser

    return "refiner_added_conds" in inspect.getsource(denoiser)


@pytest.mark.skipif(not _denoiser_dispatches_refiner(), reason="denoiser.py does not call refiner_added_conds yet")
def test_refiner_ksampler_uses_the_aesthetic_score(models):
    model, clip, _ = _checkpoint("sdxl_refiner")
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    refiner_encode = NODES["CLIPTextEncodeSDXLRefiner"]().encode
    negative = refiner_encode(clip, 2.5, 64, 64, "")[0]
    runs = []
    for ascore in (6.0, 9.0):
        positive = refiner_encode(clip, ascore, 64, 64, PROMPT)[0]
        args = (model, 5, 3, 4.0, "euler", "normal", positive, negative, latent)
        runs.append(NODES["KSampler"]().sample(*args, denoise=0.3)[0]["samples"])
    assert torch.isfinite(runs[0]).all() and not torch.allclose(runs[0], runs[1])
