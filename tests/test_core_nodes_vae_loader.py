"""VAELoader on the standalone host: VAE files in LDM and diffusers names (with or without the
checkpoint prefix) against diffusers' AutoencoderKL, and TAESD pairs from models/vae_approx
(madebyollin's layout) against diffusers' AutoencoderTiny, listed only when both halves exist."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lcm_accel.fixtures.ldm_keys import vae_to_ldm
from lcm_accel.fixtures.tiny_models import randomize, tiny_vae
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
from lcm_accel.runtime.vae_codec import decode, encode


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture()
def models(tmp_path):
    for folder in ("vae", "vae_approx"):
        (tmp_path / "models" / folder).mkdir(parents=True)
    with use_model_paths(ModelPaths(tmp_path / "models")):
        yield tmp_path / "models"


def random_taesd(seed: int = 0):
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny().eval()
    randomize(tiny, torch.Generator().manual_seed(seed))
    return tiny


def write_taesd(tiny, folder, name: str) -> None:
    """madebyollin's two files: encoder layers by index, decoder layers one index up (its clamp)."""
    state = tiny.state_dict()
    encoder = {k.removeprefix("encoder.layers."): v for k, v in state.items() if k.startswith("encoder.layers.")}
    decoder = {}
    for key, value in state.items():
        if key.startswith("decoder.layers."):
            index, rest = key.removeprefix("decoder.layers.").split(".", 1)
            decoder[f"{int(index) + 1}.{rest}"] = value
    save_file({k: v.contiguous() for k, v in encoder.items()}, str(folder / f"{name}_encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in decoder.items()}, str(folder / f"{name}_decoder.pth.safetensors"))


@pytest.mark.parametrize("layout", ["ldm", "ldm_prefixed", "diffusers"])
def test_vae_files_load_as_their_autoencoder(models, layout):
    vae = tiny_vae(0.18215).eval()
    randomize(vae, torch.Generator().manual_seed(1))
    state = vae.state_dict()
    if layout != "diffusers":  # vae_to_ldm writes checkpoint names; a VAE file usually has none
        state = vae_to_ldm(state, len(vae.config.block_out_channels))
    if layout == "ldm":
        state = {k.removeprefix("first_stage_model."): v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(models / "vae" / f"{layout}.safetensors"))
    assert f"{layout}.safetensors" in NODES["VAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    (loaded,) = NODES["VAELoader"]().load_vae(f"{layout}.safetensors")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(decode(loaded, latents), expected, rtol=0, atol=1e-5)


def test_taesd_is_listed_with_both_halves_and_decodes_scaled_latents(models):
    tiny = random_taesd()
    write_taesd(tiny, models / "vae_approx", "taesd")
    assert "taesd" in NODES["VAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    assert "taesdxl" not in NODES["VAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    (vae,) = NODES["VAELoader"]().load_vae("taesd")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ((tiny.decode(latents * 0.18215).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
        pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
        expected_latents = tiny.encode(pixels.movedim(-1, 1) * 2 - 1).latents / 0.18215
    image = decode(vae, latents)
    assert image.shape == (1, 64, 64, 3)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(encode(vae, pixels), expected_latents, rtol=0, atol=1e-6)
    (models / "vae_approx" / "taesd_encoder.safetensors").unlink()
    assert "taesd" not in NODES["VAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    with pytest.raises(FileNotFoundError, match="VAELoader: vae_name 'taesd' needs"):
        NODES["VAELoader"]().load_vae("taesd")


def test_taesdxl_uses_sdxls_scale(models):
    tiny = random_taesd(5)
    write_taesd(tiny, models / "vae_approx", "taesdxl")
    (vae,) = NODES["VAELoader"]().load_vae("taesdxl")
    assert vae.family == "sdxl" and vae.scaling_factor == pytest.approx(0.13025)


def test_a_file_that_is_not_a_vae_is_refused(models):
    save_file({"weight": torch.zeros(2)}, str(models / "vae" / "other.safetensors"))
    with pytest.raises(Exception, match=r"other\.safetensors: not a VAE"):
        NODES["VAELoader"]().load_vae("other.safetensors")
    with pytest.raises(ValueError, match="VAELoader: vae_name 'pixel_space'"):
        NODES["VAELoader"]().load_vae("pixel_space")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_unet_loader_reads_a_unet_only_file(tmp_path, family):
    from lcm_accel.fixtures import build_tiny_sd15, build_tiny_sdxl
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm

    if family == "sd15":
        tiny = build_tiny_sd15(3)
    else:  # a UNet-only file does not say how wide its size embeddings are: SDXL's are 256 wide
        tiny = build_tiny_sdxl(3, addition_time_embed_dim=256, projection_class_embeddings_input_dim=128 + 6 * 256)
    folder = tmp_path / "models" / "diffusion_models"
    folder.mkdir(parents=True)
    state = unet_to_ldm(tiny.unet.state_dict(), tiny.layers_per_block)
    state = {k.removeprefix("model.diffusion_model."): v.contiguous() for k, v in state.items()}
    save_file(state, str(folder / "unet.safetensors"))
    with use_model_paths(ModelPaths(tmp_path / "models")):
        assert NODES["UNETLoader"].INPUT_TYPES()["required"]["unet_name"][0] == ["unet.safetensors"]
        (model,) = NODES["UNETLoader"]().load_unet("unet.safetensors", "default")
        with pytest.raises(ValueError, match="UNETLoader: weight_dtype 'fp8_e4m3fn'"):
            NODES["UNETLoader"]().load_unet("unet.safetensors", "fp8_e4m3fn")
    assert model.family == family and model.prediction_type == "epsilon"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, tiny.unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if family == "sdxl":
        pooled = tiny.unet.config.projection_class_embeddings_input_dim - 6 * tiny.unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.ones(1, 6)}
    with torch.no_grad():
        expected = tiny.unet(x, 500, encoder_hidden_states=context, **kwargs).sample
        got = model.unet(x, 500, encoder_hidden_states=context, **kwargs).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
