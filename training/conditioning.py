"""Batches of a real Stable Diffusion checkpoint -> latents and UNet conditioning.

Text goes through the runtime's CLIP encoding (`runtime/text_encoding.py`,
ComfyUI's rules), cut to the first 77 tokens as diffusers' training scripts do; images through
the checkpoint's VAE (a posterior sample drawn from the step's generator, times the family's
scaling factor). Data-free batches (`--synthetic-prompts`) get their latents from the teacher's
own guided DDIM samples for the prompts (as EfficientDM does).
"""

from __future__ import annotations

from typing import Any

import torch

from .distributed import SINGLE, Shard
from .guidance import ModelFn
from .sampling import ddim_sample

TOKENS = 77


class SDBatchPreparer:
    """`prepare(batch, ctx, teacher)` for `LCMDistillTask` on an SD1.5 / SDXL checkpoint."""

    def __init__(
        self,
        clip,
        vae,
        alphas_cumprod: torch.Tensor,
        resolution: int,
        device: torch.device | str,
        synthetic_w: float = 7.5,
        synthetic_steps: int = 20,
        prediction_type: str = "epsilon",
    ):
        self.clip, self.vae, self.acp = clip, vae, alphas_cumprod
        self.resolution, self.device = resolution, torch.device(device)
        self.synthetic_w, self.synthetic_steps = synthetic_w, synthetic_steps
        self.prediction_type = prediction_type
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        from ..runtime.text_encoding import encode_prompt

        if prompt not in self._cache:
            with torch.no_grad():
                hidden, pooled = encode_prompt(self.clip, prompt)
            self._cache[prompt] = (hidden[:, :TOKENS].float(), pooled.float())
        return self._cache[prompt]

    def conditioning(self, prompts: list[str]) -> dict:
        """UNet keyword arguments for a list of prompts (SDXL adds pooled text + size/crop ids)."""
        encoded = [self._encode(p) for p in prompts]
        cond: dict[str, Any] = {"encoder_hidden_states": torch.cat([h for h, _ in encoded]).to(self.device)}
        if self.clip.family == "sdxl":
            size = float(self.resolution)
            time_ids = torch.tensor([[size, size, 0.0, 0.0, size, size]] * len(prompts), device=self.device)
            cond["added_cond_kwargs"] = {
                "text_embeds": torch.cat([p for _, p in encoded]).to(self.device),
                "time_ids": time_ids,
            }
        return cond

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, generator: torch.Generator, shard: Shard = SINGLE) -> torch.Tensor:
        """Scaled latents of (batch, 3, H, W) pixels in [-1, 1] (posterior noise drawn for the global batch)."""
        module = self.vae.vae
        dist = module.encode(pixels.to(self.device, next(module.parameters()).dtype)).latent_dist
        n, rest = dist.mean.shape[0], tuple(dist.mean.shape[1:])
        noise = shard.rows(lambda k: torch.randn((k, *rest), generator=generator), n).to(
            dist.mean.device, dist.mean.dtype
        )
        return ((dist.mean + dist.std * noise) * self.vae.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from scaled latents, differentiably (for the reward)."""
        module = self.vae.vae
        images = module.decode(latents.to(next(module.parameters()).dtype) / self.vae.scaling_factor).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def __call__(self, batch: dict, ctx: Any, teacher: ModelFn) -> dict:
        prompts = list(batch["prompt"])
        shard = getattr(ctx, "shard", SINGLE)
        cond, uncond = self.conditioning(prompts), self.conditioning([""] * len(prompts))
        if "pixels" in batch:
            latents = self.encode_pixels(batch["pixels"], ctx.generator, shard)
        else:
            side = self.resolution // 8
            noise = shard.rows(lambda k: torch.randn((k, 4, side, side), generator=ctx.generator), len(prompts)).to(
                self.device
            )
            latents = ddim_sample(
                teacher, noise, cond, uncond, self.synthetic_w, self.acp, self.synthetic_steps, self.prediction_type
            )
        return {"latents": latents, "cond": cond, "uncond": uncond, "prompts": prompts}
