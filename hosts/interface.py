"""The small interface the pack's nodes call, so the same node classes run on every host.

A host supplies the LoRA, schedule and sampling operations on its own MODEL / SIGMAS / SAMPLER /
LATENT types; the nodes only parse inputs and pass host values through. The LCM math itself lives
in `lcm_scheduler/`; a host adapts it to its model wrapper (denoiser, sigma table, noise, progress).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class HostNotAvailableError(RuntimeError):
    """The pack was asked for a host this installation cannot provide."""


class LCMHost(Protocol):
    """What the pack's nodes need from a host (MODEL, SIGMAS, SAMPLER, LATENT are host types)."""

    name: str

    def lora_names(self) -> list[str]:
        """File names in the loras folder, as the LoRA combos list them."""

    def add_loras(self, model: Any, loras: list[tuple[str, float]], rank: int | None = None) -> Any:
        """A clone of `model` with the named LoRAs mixed with their weights into one patch
        (rank None: the full concatenated rank, else SVD re-compression to `rank`)."""

    def add_clip_loras(self, clip: Any, loras: list[tuple[str, float]]) -> Any:
        """A clone of `clip` with the named LoRAs' text-encoder parts at their strengths."""

    def set_lcm_sampling(self, model: Any) -> Any:
        """A clone of `model` whose sampling mode is "lcm" (ComfyUI's ModelSamplingDiscrete lcm)."""

    def lcm_sigmas(self, model: Any, steps: int, original_steps: int, strength: float) -> Any:
        """The LCM timesteps as sigmas of the model's own training table, with a trailing 0."""

    def lcm_sampler(self, gamma: float) -> Any:
        """A SAMPLER running LCM multistep (gamma 0) or TCD with that gamma (> 0)."""

    def lcm_ksample(
        self,
        model: Any,
        seed: int,
        steps: int,
        cfg: float,
        positive: Any,
        negative: Any,
        latent: Any,
        original_steps: int,
        gamma: float,
        denoise: float,
    ) -> Any:
        """LCM (or TCD) sampling in one call; `denoise` < 1 is img2img with LCM strength = denoise."""

    def lora_path(self, name: str) -> str:
        """The full path of a file in the loras folder (its metadata names an accelerator family)."""

    def timestep_sigmas(self, model: Any, timesteps: Any) -> Any:
        """Training timesteps as SIGMAS of the model's own table, with a trailing 0."""

    def accelerator_sampler(self, kind: str, gamma: float, pure_noise_starts: tuple[int, ...] = ()) -> Any:
        """A SAMPLER running an accelerator family's sampler ("lcm", "tcd" with gamma, "ddim", "euler"),
        starting from pure noise at `pure_noise_starts` (`lcm_scheduler.sample_accelerated`)."""

    def custom_sample(
        self, model: Any, seed: int, cfg: float, positive: Any, negative: Any, sampler: Any, sigmas: Any, latent: Any
    ) -> Any:
        """SamplerCustom with add_noise: the sampled LATENT."""

    def deepcache(self, model: Any, settings: Any) -> Any:
        """A clone of `model` whose sampling runs reuse deep UNet features (`feature_cache.DeepCacheSettings`);
        refuses a branch the model's UNet does not have."""

    def fast_mode(self, model: Any, clip: Any, vae: Any, enable: bool, backend: str) -> tuple[Any, Any, Any]:
        """(MODEL, CLIP, VAE) clones whose UNet steps, text encodes and VAE decodes replay captured
        forwards (`backend`: "cuda_graph" or "torch_compile"); clip / vae may be None (returned as None).
        Where the host or device cannot, it says so once and the values run as before."""

    def quantize_unet(self, model: Any, fmt: str, keep: str, group_size: int, keep_source: bool) -> Any:
        """A clone of `model` whose UNet holds its LoRA-merged weights quantized to `fmt` ("int8",
        "fp8_e4m3", "int4"; `quantize.quantize_unet`), the layers matching `keep` (comma-separated
        globs, "default" = first/last conv + time embedding) left in high precision."""


def running_in_comfyui() -> bool:
    """True when ComfyUI's own `comfy` package and `folder_paths` module are loaded (the pack was
    imported by ComfyUI), False for headless use."""
    return "comfy" in sys.modules and "folder_paths" in sys.modules
