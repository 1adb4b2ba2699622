"""EmptyLatentImage, VAEDecode/VAEEncode against diffusers' AutoencoderKL, and the image nodes:
SaveImage's PNG metadata as Pillow reads it, PreviewImage, LoadImage's IMAGE and MASK."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths


@pytest.fixture(scope="module")
def vae():
    root = shared_models_root()
    return load_checkpoint(root / "models" / "checkpoints" / "tiny_sd15.safetensors")[2]


@pytest.fixture()
def paths(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "input").mkdir()
    with use_model_paths(ModelPaths(tmp_path / "models")) as current:
        yield current


def test_empty_latent_shape():
    (latent,) = NODES["EmptyLatentImage"]().generate(72, 40, 3)
    assert latent["samples"].shape == (3, 4, 5, 9) and not latent["samples"].any()


def test_vae_decode_matches_autoencoder(vae):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    (image,) = NODES["VAEDecode"]().decode(vae, {"samples": latents})
    with torch.no_grad():
        reference = vae.vae.decode(latents).sample
    reference = ((reference + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert image.shape == (2, 64, 64, 3)
    torch.testing.assert_close(image, reference, rtol=0, atol=1e-6)


def test_vae_encode_crops_to_multiple_of_8_and_takes_the_mean(vae):
    pixels = torch.rand(1, 70, 67, 4, generator=torch.Generator().manual_seed(1))  # alpha is dropped
    (latent,) = NODES["VAEEncode"]().encode(vae, pixels)
    cropped = pixels[:, 3:67, 1:65, :3]  # centred: (70 % 8) // 2 = 3, (67 % 8) // 2 = 1
    with torch.no_grad():
        reference = vae.vae.encode(cropped.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    assert latent["samples"].shape == (1, 4, 8, 8)
    torch.testing.assert_close(latent["samples"], reference, rtol=0, atol=1e-6)


def test_save_image_writes_comfyui_metadata(paths):
    images = torch.rand(2, 16, 24, 3, generator=torch.Generator().manual_seed(2))
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 5}}}
    workflow = {"nodes": [{"id": 3, "type": "KSampler"}], "links": []}
    result = NODES["SaveImage"]().save_images(images, "run/img", prompt=prompt, extra_pnginfo={"workflow": workflow})
    files = result["ui"]["images"]
    assert [f["filename"] for f in files] == ["img_00001_.png", "img_00002_.png"]
    assert all(f["subfolder"] == "run" and f["type"] == "output" for f in files)
    with Image.open(paths.output_dir / "run" / "img_00002_.png") as png:
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == workflow
        pixels = np.asarray(png.convert("RGB"))
    expected = np.clip(images[1].numpy() * 255.0, 0, 255).astype(np.uint8)
    assert np.array_equal(pixels, expected)
    again = NODES["SaveImage"]().save_images(images[:1], "run/img")
    assert again["ui"]["images"][0]["filename"] == "img_00003_.png"


def test_preview_image_goes_to_temp(paths):
    result = NODES["PreviewImage"]().save_images(torch.zeros(1, 8, 8, 3))
    (entry,) = result["ui"]["images"]
    assert entry["type"] == "temp"
    assert (paths.output_dir.parent / "temp" / entry["filename"]).is_file()


def test_load_image_gives_image_and_inverted_alpha_mask(paths):
    rgba = np.random.default_rng(0).integers(0, 256, size=(12, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(paths.input_dir / "with_alpha.png")
    Image.fromarray(rgba[..., :3], "RGB").save(paths.input_dir / "plain.png")
    assert NODES["LoadImage"].INPUT_TYPES()["required"]["image"][0] == ["plain.png", "with_alpha.png"]
    image, mask = NODES["LoadImage"]().load_image("with_alpha.png")
    assert image.shape == (1, 12, 20, 3) and mask.shape == (1, 12, 20)
    torch.testing.assert_close(image[0], torch.from_numpy(rgba[..., :3] / 255.0).float())
    torch.testing.assert_close(mask[0], 1.0 - torch.from_numpy(rgba[..., 3] / 255.0).float())
    _, plain_mask = NODES["LoadImage"]().load_image("plain.png")
    assert plain_mask.shape == (1, 64, 64) and not plain_mask.any()
