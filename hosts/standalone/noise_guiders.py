"""NOISE and GUIDER values of SamplerCustomAdvanced (ComfyUI's Noise_RandomNoise / Noise_EmptyNoise
and CFGGuider / Guider_Basic), on the standalone host's sampling pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...runtime.model_types import ModelHost


@dataclass(frozen=True)
class RandomNoiseValue:
    """The initial noise KSampler draws for `seed` (per `batch_index` when the latent has one)."""

    seed: int

    def generate_noise(self, latent: dict) -> torch.Tensor:
        from .sampling_pipeline import prepare_noise

        return prepare_noise(latent["samples"].float(), int(self.seed), latent.get("batch_index"))


@dataclass(frozen=True)
class EmptyNoiseValue:
    """No initial noise (a latent that is already noisy, e.g. a second sampling stage); seed 0."""

    seed: int = 0

    def generate_noise(self, latent: dict) -> torch.Tensor:
        return torch.zeros_like(latent["samples"], dtype=torch.float32)


@dataclass(frozen=True)
class GuiderValue:
    """A MODEL with its conditioning and CFG scale: what denoises at each step. A guider without
    a negative (BasicGuider) has cfg 1, so only the positive pass runs."""

    model: ModelHost
    positive: list
    negative: list
    cfg: float = 1.0

    def sample(self, noise, sampler, sigmas: torch.Tensor, latent: dict) -> tuple[dict, dict]:
        """(output, denoised_output) LATENTs of one run from `noise`'s initial noise."""
        from .sampling_pipeline import sample_with_noise

        return sample_with_noise(
            self.model,
            noise.generate_noise(latent),
            int(noise.seed),
            float(self.cfg),
            self.positive,
            self.negative,
            sampler,
            sigmas,
            latent,
        )
