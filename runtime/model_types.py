"""The loaded model parts the runtime hands out, and the standalone host passes between nodes as
ComfyUI's MODEL, CLIP and VAE.

MODEL and CLIP are light wrappers: `clone()` copies the options but shares the weights, as
ComfyUI's ModelPatcher does, so LoRA nodes can patch the one shared UNet in place.
CONDITIONING, LATENT and IMAGE use ComfyUI's plain formats:
  CONDITIONING  list of [tensor (B, tokens, dim), {"pooled_output": tensor or None, ...}]
  LATENT        {"samples": tensor (B, 4, H/8, W/8), optional "noise_mask", "batch_index"}
  IMAGE         tensor (B, H, W, C) float in 0..1;  MASK  tensor (B, H, W) float in 0..1
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

# The training noise schedule of Stable Diffusion 1.x, 2.x and XL alike (scaled-linear betas)
SD_NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


@dataclass
class ModelHost:
    """MODEL: a diffusers UNet2DConditionModel with its training noise schedule.

    `prediction_type` is what the weights predict ("epsilon" or "v_prediction");
    `model_options["sampling"]`, set by ModelSamplingDiscrete, overrides how samplers read it
    ("eps", "v_prediction", "lcm", "x0"). `patches` is where weight patchers record themselves.
    """

    unet: torch.nn.Module
    family: str
    noise_schedule: dict = field(default_factory=lambda: dict(SD_NOISE_SCHEDULE))
    prediction_type: str = "epsilon"
    model_options: dict[str, Any] = field(default_factory=dict)
    patches: list[Any] = field(default_factory=list)

    def clone(self) -> ModelHost:
        """A new MODEL sharing the UNet weights, with its own options and patch list."""
        return replace(self, model_options=dict(self.model_options), patches=list(self.patches))

    @property
    def sampling_type(self) -> str:
        """How samplers interpret the UNet output: the ModelSamplingDiscrete override or the native type."""
        native = "v_prediction" if self.prediction_type == "v_prediction" else "eps"
        return self.model_options.get("sampling", native)


@dataclass
class ClipHost:
    """CLIP: tokenizer + text encoder(s). SD1.5 has one (clip_l); SDXL two (clip_l, clip_g).

    `layer_idx` is ComfyUI's clip skip as CLIPSetLastLayer sets it (-1 = last layer, -2 = the
    one before, ...); None means the family default (SD1.5: the last layer after the final
    layer norm; SDXL: the penultimate layer without it).
    """

    tokenizer: Any
    text_encoders: list[torch.nn.Module]
    family: str
    layer_idx: int | None = None
    patches: list[Any] = field(default_factory=list)
    fast: Any = None  # fast_mode.FastModeSettings set by LCMFastMode (None: the run's default)

    def clone(self) -> ClipHost:
        """A new CLIP sharing the encoder weights, with its own layer setting and patch list."""
        return replace(self, patches=list(self.patches))


@dataclass
class VaeHost:
    """VAE: a diffusers AutoencoderKL and the latent scaling factor of its model family."""

    vae: torch.nn.Module
    scaling_factor: float
    family: str = "sd15"
    fast: Any = None  # fast_mode.FastModeSettings set by LCMFastMode (None: the run's default)


Conditioning = list  # [[tensor, {"pooled_output": ...}], ...]
Latent = dict  # {"samples": tensor, ...}
