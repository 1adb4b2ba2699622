"""ComfyUI's resizing nodes on the standalone host: LatentUpscale, LatentUpscaleBy, ImageScale,
ImageScaleBy, ImageScaleToTotalPixels. Sizes and rounding as ComfyUI 0.3.64 computes them; the
interpolate modes against torch, Lanczos against Pillow, bislerp against a per-pixel reference.
(tests/test_core_nodes_comfyui.py compares the outputs with ComfyUI's own.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.hosts.standalone.resample import bislerp, center_crop_to_aspect, common_upscale


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _latent(b=2, h=8, w=12, seed=0):
    return torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _image(b=1, h=20, w=30, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_interpolate_methods_are_torchs(method):
    x = _latent()
    torch.testing.assert_close(common_upscale(x, 17, 11, method, "disabled"), F.interpolate(x, (11, 17), mode=method))


def test_center_crop_cuts_to_the_target_aspect():
    x = _latent(1, 10, 20)
    assert center_crop_to_aspect(x, 10, 10).shape[-2:] == (10, 10)  # 20 wide -> 5 cut each side
    assert torch.equal(center_crop_to_aspect(x, 10, 10), x[..., :, 5:15])
    assert center_crop_to_aspect(x, 40, 10).shape[-2:] == (6, 20)  # taller than 4:1 -> rows cut (2 each)
    assert torch.equal(center_crop_to_aspect(x, 20, 10), x)
    out = common_upscale(x, 8, 8, "bilinear", "center")
    torch.testing.assert_close(out, F.interpolate(x[..., 5:15], (8, 8), mode="bilinear"))


def test_lanczos_is_pillows_on_8_bit_pixels():
    image = _image(2)
    out = common_upscale(image.movedim(-1, 1), 45, 31, "lanczos", "disabled").movedim(1, -1)
    for index in range(2):
        pil = Image.fromarray(np.clip(255.0 * image[index].numpy(), 0, 255).astype(np.uint8))
        expected = np.asarray(pil.resize((45, 31), Image.Resampling.LANCZOS)).astype(np.float32) / 255.0
        assert np.array_equal(out[index].numpy(), expected)


def _reference_bislerp_axis(x: torch.Tensor, new: int) -> torch.Tensor:
    """One width pass, pixel by pixel, with ComfyUI's source positions (float64 arithmetic)."""
    old = x.shape[-1]
    out = torch.zeros(x.shape[:-1] + (new,), dtype=torch.float64)
    for j in range(new):
        position = min(max((j + 0.5) * old / new - 0.5, 0.0), old - 1)
        low = int(math.floor(position))
        frac = position - low
        high = min(low + 1, old - 1)
        for b in range(x.shape[0]):
            for i in range(x.shape[2]):
                a, c = x[b, :, i, low].double(), x[b, :, i, high].double()
                na, nc = a.norm(), c.norm()
                ua, uc = a / na, c / nc
                cos = float((ua * uc).sum())
                if cos > 1 - 1e-5:
                    value = a
                elif cos < 1e-5 - 1:
                    value = a * (1 - frac) + c * frac
                else:
                    angle = math.acos(cos)
                    value = (math.sin((1 - frac) * angle) * ua + math.sin(frac * angle) * uc) / math.sin(angle)
                    value = value * (na * (1 - frac) + nc * frac)
                out[b, :, i, j] = value
    return out


def test_bislerp_matches_a_per_pixel_slerp_and_keeps_norms():
    x = _latent(1, 3, 5, seed=3)
    ours = bislerp(x, 9, 3)  # height unchanged: the height pass is the identity
    reference = _reference_bislerp_axis(x, 9).float()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    norms = ours.norm(dim=1)
    low, high = x.norm(dim=1).min(), x.norm(dim=1).max()
    assert bool((norms >= low - 1e-4).all() and (norms <= high + 1e-4).all())
    torch.testing.assert_close(bislerp(x, 5, 3), x, rtol=1e-5, atol=1e-5)  # same size: unchanged
    assert bislerp(_latent(2, 8, 12), 18, 12).shape == (2, 4, 12, 18)


def test_latent_upscale_sizes_follow_comfyui():
    node = NODES["LatentUpscale"]()
    latent = {"samples": _latent(1, 8, 12), "batch_index": [3]}
    assert node.upscale(latent, "bilinear", 0, 0, "disabled")[0] is latent
    (out,) = node.upscale(latent, "nearest-exact", 200, 100, "disabled")
    assert out["samples"].shape[-2:] == (12, 25) and out["batch_index"] == [3]  # 100 -> 64 floor not hit
    assert node.upscale(latent, "bilinear", 0, 128, "disabled")[0]["samples"].shape[-2:] == (16, 24)
    assert node.upscale(latent, "bilinear", 200, 0, "disabled")[0]["samples"].shape[-2:] == (16, 25)
    assert node.upscale(latent, "bilinear", 16, 16, "center")[0]["samples"].shape[-2:] == (8, 8)  # at least 64
    (bis,) = node.upscale(latent, "bislerp", 192, 128, "disabled")
    torch.testing.assert_close(bis["samples"], bislerp(latent["samples"], 24, 16))


def test_latent_upscale_by_rounds_each_side():
    (out,) = NODES["LatentUpscaleBy"]().upscale({"samples": _latent(1, 8, 12)}, "bicubic", 1.5)
    assert out["samples"].shape[-2:] == (12, 18)
    (out,) = NODES["LatentUpscaleBy"]().upscale({"samples": _latent(1, 8, 13)}, "area", 0.5)
    assert out["samples"].shape[-2:] == (4, 6)  # round(6.5) = 6, as Python rounds


def test_image_scale_nodes_sizes():
    image = _image(2, 20, 30)
    assert NODES["ImageScale"]().upscale(image, "bilinear", 0, 0, "disabled")[0] is image
    assert NODES["ImageScale"]().upscale(image, "bilinear", 0, 40, "disabled")[0].shape == (2, 40, 60, 3)
    assert NODES["ImageScale"]().upscale(image, "area", 45, 0, "disabled")[0].shape == (2, 30, 45, 3)
    (cropped,) = NODES["ImageScale"]().upscale(image, "nearest-exact", 10, 10, "center")
    expected = F.interpolate(image.movedim(-1, 1)[..., 5:25], (10, 10), mode="nearest-exact").movedim(1, -1)
    torch.testing.assert_close(cropped, expected)
    assert NODES["ImageScaleBy"]().upscale(image, "bicubic", 1.25)[0].shape == (2, 25, 38, 3)
    (total,) = NODES["ImageScaleToTotalPixels"]().upscale(image, "lanczos", 0.01)
    scale = math.sqrt(int(0.01 * 1024 * 1024) / 600)
    assert total.shape == (2, round(20 * scale), round(30 * scale), 3)


@pytest.mark.parametrize(
    "node, call",
    [
        ("LatentUpscale", lambda n: n.upscale({"samples": _latent()}, "lanczos", 64, 64, "disabled")),
        ("LatentUpscaleBy", lambda n: n.upscale({"samples": _latent()}, "cubic", 2.0)),
        ("ImageScale", lambda n: n.upscale(_image(), "bislerp", 8, 8, "disabled")),
        ("ImageScale", lambda n: n.upscale(_image(), "area", 8, 8, "middle")),
        ("ImageScaleToTotalPixels", lambda n: n.upscale(_image(), "nearest", 0.5)),
    ],
)
def test_bad_choices_name_the_node_and_input(node, call):
    with pytest.raises(ValueError, match=rf"^{node}: (upscale_method|crop) "):
        call(NODES[node]())
