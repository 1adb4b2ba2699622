"""`hosts.interface.LCMHost` on the standalone (diffusers) host: what the pack's nodes call."""

from __future__ import annotations

import torch

from ...lcm_scheduler import sigmas_for_timesteps
from ...runtime.fast_mode import FastModeSettings, with_fast_mode
from ...runtime.lora_state import add_clip_loras_by_name, add_loras, load_lora_file
from ...runtime.model_paths import get_model_paths
from ...runtime.model_types import ModelHost
from ...runtime.quantized import quantize_model
from .deepcache import apply_deepcache
from .lcm_denoiser import lcm_train_sigmas, model_lcm_sigmas
from .sampler_values import AcceleratorSampler, LCMTCDSampler
from .sampling_pipeline import lcm_ksample, sample_custom


class StandaloneLCMHost:
    """`hosts.interface.LCMHost` on the standalone (diffusers) host."""

    name = "standalone"

    def lora_names(self) -> list[str]:
        return get_model_paths().get_filename_list("loras")

    def add_loras(self, model: ModelHost, loras: list[tuple[str, float]], rank: int | None = None) -> ModelHost:
        return add_loras(model, [(load_lora_file(name), float(weight)) for name, weight in loras], rank=rank)

    def add_clip_loras(self, clip, loras: list[tuple[str, float]]):
        return add_clip_loras_by_name(clip, loras)

    def set_lcm_sampling(self, model: ModelHost) -> ModelHost:
        model = model.clone()
        model.model_options["sampling"] = "lcm"
        return model

    def lcm_sigmas(self, model: ModelHost, steps: int, original_steps: int, strength: float) -> torch.Tensor:
        return model_lcm_sigmas(model, steps, original_steps, strength)

    def lcm_sampler(self, gamma: float) -> LCMTCDSampler:
        return LCMTCDSampler(float(gamma))

    def lora_path(self, name: str) -> str:
        return str(get_model_paths().get_full_path("loras", name))

    def timestep_sigmas(self, model: ModelHost, timesteps: torch.Tensor) -> torch.Tensor:
        return sigmas_for_timesteps(timesteps, lcm_train_sigmas(model))

    def accelerator_sampler(
        self, kind: str, gamma: float, pure_noise_starts: tuple[int, ...] = ()
    ) -> AcceleratorSampler:
        return AcceleratorSampler(kind, float(gamma), tuple(pure_noise_starts))

    def custom_sample(self, model, seed, cfg, positive, negative, sampler, sigmas, latent) -> dict:
        return sample_custom(model, True, seed, cfg, positive, negative, sampler, sigmas, latent)[0]

    def lcm_ksample(self, model, seed, steps, cfg, positive, negative, latent, original_steps, gamma, denoise) -> dict:
        return lcm_ksample(model, seed, steps, cfg, positive, negative, latent, original_steps, gamma, denoise)

    def deepcache(self, model: ModelHost, settings) -> ModelHost:
        return apply_deepcache(model, settings)

    def fast_mode(self, model: ModelHost, clip, vae, enable: bool, backend: str) -> tuple:
        settings = FastModeSettings(bool(enable), backend)
        return tuple(None if value is None else with_fast_mode(value, settings) for value in (model, clip, vae))

    def quantize_unet(self, model: ModelHost, fmt: str, keep: str, group_size: int, keep_source: bool) -> ModelHost:
        return quantize_model(model, fmt, keep, group_size, keep_source)


STANDALONE_HOST = StandaloneLCMHost()
