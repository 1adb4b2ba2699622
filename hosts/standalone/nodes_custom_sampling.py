"""Custom-sampling nodes (ComfyUI's SamplerCustom, KSamplerSelect, BasicScheduler, SDTurboScheduler).

Same inputs as ComfyUI's comfy_extras/nodes_custom_sampler.py. SAMPLER values are objects with a
`sample(job)` method (`lcm.KDiffusionSampler`, `lcm.LCMTCDSampler`); SIGMAS is a float tensor
ending in 0. Torch and the machinery in `lcm.py` are imported only when a node runs.
"""

from __future__ import annotations

from .names import MAX_SEED, SAMPLER_NAMES, SCHEDULER_NAMES


class SamplerCustom:
    """Sample a latent with an explicit SAMPLER and SIGMAS; also returns the last x0 prediction."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "add_noise": ("BOOLEAN", {"default": True}),
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "sampler": ("SAMPLER",),
                "sigmas": ("SIGMAS",),
                "latent_image": ("LATENT",),
            }
        }

    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"
    CATEGORY = "sampling/custom_sampling"

    def sample(self, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        from .sampling_pipeline import sample_custom

        return sample_custom(model, bool(add_noise), noise_seed, cfg, positive, negative, sampler, sigmas, latent_image)


class KSamplerSelect:
    """A k-diffusion SAMPLER by ComfyUI's name."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler_name": (SAMPLER_NAMES,)}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "sampling/custom_sampling/samplers"

    def get_sampler(self, sampler_name: str):
        if sampler_name not in SAMPLER_NAMES:
            raise ValueError(
                f"KSamplerSelect: sampler_name {sampler_name!r} is not available; "
                f"choose from {', '.join(SAMPLER_NAMES)}"
            )
        from .sampler_values import KDiffusionSampler

        return (KDiffusionSampler(sampler_name),)


class BasicScheduler:
    """SIGMAS of a named scheduler on the model's table; `denoise` < 1 keeps the last `steps`."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "scheduler": (SCHEDULER_NAMES,),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "sampling/custom_sampling/schedulers"

    def get_sigmas(self, model, scheduler: str, steps: int, denoise: float):
        from ...k_sampling import ksampler_sigmas
        from .denoiser import sigma_table

        return (ksampler_sigmas(sigma_table(model), scheduler, int(steps), float(denoise)).cpu(),)


SD_TURBO_TIMESTEPS = 10  # SD-Turbo / SDXL-Turbo were distilled on timesteps 999, 899, ..., 99


class SDTurboScheduler:
    """SIGMAS for SD-Turbo / SDXL-Turbo: `steps` of the timesteps 999, 899, ..., 99, starting
    further down the list when `denoise` < 1 (img2img), then 0."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "steps": ("INT", {"default": 1, "min": 1, "max": 10}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "sampling/custom_sampling/schedulers"

    def get_sigmas(self, model, steps: int, denoise: float):
        import torch

        from .denoiser import sigma_table

        if not 0.0 <= float(denoise) <= 1.0:
            raise ValueError(f"SDTurboScheduler: denoise {denoise} is outside 0..1")
        first = SD_TURBO_TIMESTEPS - int(SD_TURBO_TIMESTEPS * denoise)
        timesteps = torch.arange(SD_TURBO_TIMESTEPS, 0, -1) * 100 - 1
        sigmas = sigma_table(model).sigma(timesteps[first : first + int(steps)])
        return (torch.cat([sigmas, sigmas.new_zeros([1])]).cpu(),)
