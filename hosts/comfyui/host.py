"""`hosts.interface.LCMHost` on ComfyUI's own types."""

from __future__ import annotations

import folder_paths

from ...runtime.lora_files import load_lora_cached
from . import deepcache, fast_mode, lora, lora_clip, model_sampling, sampling
from . import quantize as quantize_host


class ComfyUILCMHost:
    """The pack's node operations inside ComfyUI."""

    name = "comfyui"

    def lora_names(self) -> list[str]:
        return folder_paths.get_filename_list("loras")

    def add_loras(self, model, loras: list[tuple[str, float]], rank: int | None = None):
        quantize_host.refuse_lora_on_quantized(model)
        files = [
            (load_lora_cached(folder_paths.get_full_path_or_raise("loras", name)), float(weight))
            for name, weight in loras
        ]
        return lora.add_loras(model, files, rank)

    def add_clip_loras(self, clip, loras: list[tuple[str, float]]):
        """A clone of ComfyUI's CLIP with the named LoRAs' text-encoder parts at their strengths
        (`lora_clip.add_clip_loras`: ComfyUI's own key map and patches, as its core LoraLoader)."""
        files = []
        for name, strength in loras:
            path = folder_paths.get_full_path_or_raise("loras", name)
            files.append((path, load_lora_cached(path), float(strength)))
        return lora_clip.add_clip_loras(clip, files)

    def set_lcm_sampling(self, model):
        return model_sampling.set_lcm_sampling(model)

    def lcm_sigmas(self, model, steps: int, original_steps: int, strength: float):
        return sampling.model_lcm_sigmas(model, steps, original_steps, strength)

    def lcm_sampler(self, gamma: float):
        return sampling.lcm_sampler(gamma)

    def lora_path(self, name: str) -> str:
        return folder_paths.get_full_path_or_raise("loras", name)

    def timestep_sigmas(self, model, timesteps):
        return sampling.model_timestep_sigmas(model, timesteps)

    def accelerator_sampler(self, kind: str, gamma: float, pure_noise_starts: tuple[int, ...] = ()):
        return sampling.accelerator_sampler(kind, gamma, pure_noise_starts)

    def custom_sample(self, model, seed, cfg, positive, negative, sampler, sigmas, latent):
        return sampling.custom_sample(model, seed, cfg, positive, negative, sampler, sigmas, latent)

    def lcm_ksample(self, model, seed, steps, cfg, positive, negative, latent, original_steps, gamma, denoise):
        return sampling.lcm_ksample(model, seed, steps, cfg, positive, negative, latent, original_steps, gamma, denoise)

    def deepcache(self, model, settings):
        return deepcache.apply_deepcache(model, settings)

    def quantize_unet(self, model, fmt: str, keep: str, group_size: int, keep_source: bool):
        return quantize_host.quantize_model(model, fmt, keep, group_size, keep_source)

    def fast_mode(self, model, clip, vae, enable: bool, backend: str):
        return fast_mode.fast_mode(model, clip, vae, enable, backend)


COMFYUI_HOST = ComfyUILCMHost()
