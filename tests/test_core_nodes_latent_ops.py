"""ComfyUI's latent batch and inpainting nodes on the standalone host: RepeatLatentBatch,
LatentFromBatch, SetLatentNoiseMask, VAEEncodeForInpaint, LoadImageMask (ComfyUI 0.3.64's rules
for batch indices, mask cycling, crop, grey fill and mask growth), and an inpainting run that
keeps the unmasked latent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
from lcm_accel.runtime.vae_codec import encode


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def sd15():
    return load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors")


def _latent(b=4, seed=0):
    return torch.randn(b, 4, 4, 6, generator=torch.Generator().manual_seed(seed))


def test_repeat_latent_batch_repeats_samples_masks_and_indices():
    samples = _latent(2)
    (out,) = NODES["RepeatLatentBatch"]().repeat({"samples": samples}, 3)
    assert torch.equal(out["samples"], torch.cat([samples] * 3)) and "batch_index" not in out
    masks = torch.rand(2, 1, 4, 6)
    one_mask = torch.rand(1, 1, 4, 6)
    (out,) = NODES["RepeatLatentBatch"]().repeat({"samples": samples, "noise_mask": masks, "batch_index": [4, 5]}, 3)
    assert torch.equal(out["noise_mask"], torch.cat([masks] * 3))
    assert out["batch_index"] == [4, 5, 6, 7, 8, 9]
    (out,) = NODES["RepeatLatentBatch"]().repeat({"samples": samples, "noise_mask": one_mask}, 2)
    assert out["noise_mask"] is one_mask  # one mask covers any batch


def test_latent_from_batch_clamps_and_records_batch_index():
    samples = _latent(4)
    (out,) = NODES["LatentFromBatch"]().frombatch({"samples": samples}, 1, 2)
    assert torch.equal(out["samples"], samples[1:3]) and out["batch_index"] == [1, 2]
    (out,) = NODES["LatentFromBatch"]().frombatch({"samples": samples}, 10, 5)  # clamped to the last one
    assert torch.equal(out["samples"], samples[3:4]) and out["batch_index"] == [3]
    masks = torch.rand(3, 1, 4, 6)  # 3 masks cycle over 4 latents: the 4th takes mask 0
    (out,) = NODES["LatentFromBatch"]().frombatch(
        {"samples": samples, "noise_mask": masks, "batch_index": [7, 8, 9, 10]}, 2, 2
    )
    assert torch.equal(out["noise_mask"], masks[[2, 0]]) and out["batch_index"] == [9, 10]
    one = torch.rand(1, 1, 4, 6)
    (out,) = NODES["LatentFromBatch"]().frombatch({"samples": samples, "noise_mask": one}, 2, 1)
    assert torch.equal(out["noise_mask"], one)


def test_latent_from_batch_keeps_the_noise_of_its_batch_position(sd15):
    model, clip, _ = sd15
    positive = NODES["CLIPTextEncode"]().encode(clip, "a cat")[0]
    (batch,) = NODES["EmptyLatentImage"]().generate(64, 64, 3)
    (full,) = NODES["KSampler"]().sample(model, 5, 2, 1.0, "euler", "normal", positive, positive, batch)
    (picked,) = NODES["LatentFromBatch"]().frombatch(batch, 2, 1)
    (alone,) = NODES["KSampler"]().sample(model, 5, 2, 1.0, "euler", "normal", positive, positive, picked)
    torch.testing.assert_close(alone["samples"], full["samples"][2:3], rtol=1e-4, atol=1e-5)


def test_set_latent_noise_mask_reshapes_the_mask():
    mask = torch.rand(2, 16, 24)
    (out,) = NODES["SetLatentNoiseMask"]().set_mask({"samples": _latent(2)}, mask)
    assert out["noise_mask"].shape == (2, 1, 16, 24) and torch.equal(out["noise_mask"][:, 0], mask)


def _reference_inpaint(pixels, mask, grow):
    """VAEEncodeForInpaint's preparation written out directly (crop offsets, grey fill, dilation by
    a sum over the grow x grow window)."""
    h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    m = F.interpolate(mask[:, None], size=pixels.shape[1:3], mode="bilinear")[:, :, top : top + h, left : left + w]
    px = pixels[:, top : top + h, left : left + w].clone()
    binary = m.round()
    px[..., :3] = torch.where(binary[:, 0, :, :, None] > 0, torch.full_like(px[..., :3], 0.5), px[..., :3])
    if grow:
        window = torch.ones(1, 1, grow, grow)
        grown = F.conv2d(binary, window, padding=math.ceil((grow - 1) / 2)).clamp(0, 1)
    else:
        grown = m
    return px, grown[:, :, :h, :w].round()


@pytest.mark.parametrize("grow", [0, 1, 6, 7])
def test_vae_encode_for_inpaint_greys_the_hole_and_grows_the_mask(sd15, grow):
    vae = sd15[2]
    pixels = torch.rand(1, 70, 67, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 35, 34)
    mask[:, 10:20, 12:18] = 1.0
    (latent,) = NODES["VAEEncodeForInpaint"]().encode(vae, pixels, mask, grow)
    expected_pixels, expected_mask = _reference_inpaint(pixels, mask, grow)
    assert latent["noise_mask"].shape == (1, 1, 64, 64)
    assert torch.equal(latent["noise_mask"], expected_mask)
    torch.testing.assert_close(latent["samples"], encode(vae, expected_pixels), rtol=0, atol=1e-6)
    if grow > 1:
        assert latent["noise_mask"].sum() > _reference_inpaint(pixels, mask, 0)[1].sum()


def test_vae_encode_for_inpaint_refuses_a_bad_grow(sd15):
    with pytest.raises(ValueError, match="VAEEncodeForInpaint: grow_mask_by"):
        NODES["VAEEncodeForInpaint"]().encode(sd15[2], torch.rand(1, 64, 64, 3), torch.zeros(1, 64, 64), 65)


def test_inpainting_keeps_the_unmasked_latent(sd15):
    model, clip, vae = sd15
    positive = NODES["CLIPTextEncode"]().encode(clip, "a dog")[0]
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 1.0
    (latent,) = NODES["VAEEncodeForInpaint"]().encode(vae, pixels, mask, 0)
    (out,) = NODES["KSampler"]().sample(model, 1, 3, 2.0, "euler", "karras", positive, positive, latent, 1.0)
    keep = latent["noise_mask"][0, 0, ::8, ::8] == 0  # the mask at latent resolution (bilinear of 0/1 blocks)
    torch.testing.assert_close(out["samples"][..., keep], latent["samples"][..., keep], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out["samples"][..., ~keep], latent["samples"][..., ~keep])


@pytest.fixture()
def input_dir(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "input").mkdir()
    with use_model_paths(ModelPaths(tmp_path / "models")):
        yield tmp_path / "input"


def test_load_image_mask_reads_each_channel(input_dir):
    rgba = np.random.default_rng(0).integers(0, 256, size=(12, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(input_dir / "m.png")
    Image.fromarray(rgba[..., :3], "RGB").save(input_dir / "rgb.png")
    Image.fromarray(rgba[..., 0], "L").save(input_dir / "gray.png")
    node = NODES["LoadImageMask"]()
    assert {"m.png", "rgb.png", "gray.png"} <= set(node.INPUT_TYPES()["required"]["image"][0])
    for index, channel in enumerate(["red", "green", "blue"]):
        (mask,) = node.load_image("m.png", channel)
        assert mask.shape == (1, 12, 10) and torch.equal(mask[0], torch.from_numpy(rgba[..., index] / 255.0).float())
    (alpha,) = node.load_image("m.png", "alpha")
    torch.testing.assert_close(alpha[0], 1.0 - torch.from_numpy(rgba[..., 3] / 255.0).float())
    assert torch.equal(node.load_image("rgb.png", "alpha")[0], torch.zeros(1, 12, 10))  # opaque: nothing masked
    assert torch.equal(node.load_image("gray.png", "green")[0][0], torch.from_numpy(rgba[..., 0] / 255.0).float())
    with pytest.raises(ValueError, match="LoadImageMask: channel"):
        node.load_image("m.png", "luma")
