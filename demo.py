"""`python -m lcm_accel demo`: the LCM multistep sampler on an exactly-known denoiser.

The "model" is the ideal denoiser of a Gaussian image distribution N(mu, s^2 I) (mu a colour
gradient), whose x0 prediction has a closed form, so the demo needs no weights and shows the
exact 4-step LCM schedule and sampler (the same code the nodes use) producing an image.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .lcm_scheduler import lcm_timesteps, make_alphas_cumprod, sample_lcm_vp

SIZE = 128
PIXEL_STD = 0.15


def _mean_image() -> torch.Tensor:
    """A smooth colour gradient in [-1, 1], shape (1, 3, SIZE, SIZE)."""
    ramp = torch.linspace(-1.0, 1.0, SIZE)
    y, x = torch.meshgrid(ramp, ramp, indexing="ij")
    rings = torch.cos(6.0 * (x**2 + y**2).sqrt())
    return torch.stack([x * 0.8, y * 0.8, rings * 0.6]).unsqueeze(0)


def gaussian_eps_model(mean: torch.Tensor, std: float, alphas_cumprod: torch.Tensor):
    """The exact eps prediction E[eps | x_t] for data ~ N(mean, std^2 I)."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        x0 = mean + a.sqrt() * std**2 / (a * std**2 + 1 - a) * (x - a.sqrt() * mean)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model


def run_demo(out_dir: str | Path = "output", seed: int = 0, steps: int = 4) -> Path:
    """Sample one image with `steps` LCM steps and write it as a PNG; returns its path."""
    from PIL import Image

    acp = make_alphas_cumprod()
    timesteps = lcm_timesteps(steps)
    print(f"LCM timesteps for {steps} steps (original_inference_steps=50): {timesteps.tolist()}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 3, SIZE, SIZE), generator=generator)
    model = gaussian_eps_model(_mean_image(), PIXEL_STD, acp)
    image = sample_lcm_vp(model, x, timesteps, acp, generator=generator, disable=True)
    pixels = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lcm_demo_{steps}steps_seed{seed}.png"
    Image.fromarray(pixels).save(path)
    return path
