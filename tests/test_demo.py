"""The README's demo command runs and writes an image that shows what the sampler was asked for."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from lcm_accel.demo import SIZE, _mean_image


def test_demo_command_writes_png(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lcm_accel", "demo", "--out", str(tmp_path), "--seed", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and str(pngs[0]) in out.stdout
    pixels = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (SIZE, SIZE, 3)
    # The data distribution's mean image must be what came out (up to the model's pixel noise).
    mean = ((_mean_image()[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
    corr = np.corrcoef(pixels.ravel(), mean.ravel())[0, 1]
    assert corr > 0.95, corr
    assert not torch.equal(torch.from_numpy(pixels), torch.from_numpy(mean).round())
