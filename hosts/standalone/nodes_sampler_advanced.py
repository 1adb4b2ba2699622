"""SamplerCustomAdvanced and its inputs (ComfyUI's RandomNoise, DisableNoise, CFGGuider, BasicGuider).

The sampling run is SamplerCustom's (`sampling_pipeline`), split into a NOISE value (the initial
noise and the seed), a GUIDER value (model, conditioning, CFG), a SAMPLER and SIGMAS.
"""

from __future__ import annotations

from .names import MAX_SEED


class RandomNoise:
    """NOISE: KSampler's seeded initial noise."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True})
            }
        }

    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"
    CATEGORY = "sampling/custom_sampling/noise"

    def get_noise(self, noise_seed: int):
        from .noise_guiders import RandomNoiseValue

        if not 0 <= int(noise_seed) <= MAX_SEED:
            raise ValueError(f"RandomNoise: noise_seed {noise_seed} is outside 0..{MAX_SEED}")
        return (RandomNoiseValue(int(noise_seed)),)


class DisableNoise:
    """NOISE: none (the latent is sampled as it is)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"
    CATEGORY = "sampling/custom_sampling/noise"

    def get_noise(self):
        from .noise_guiders import EmptyNoiseValue

        return (EmptyNoiseValue(),)


class CFGGuider:
    """GUIDER: classifier-free guidance between a positive and a negative conditioning."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            }
        }

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = "sampling/custom_sampling/guiders"

    def get_guider(self, model, positive, negative, cfg: float):
        from .noise_guiders import GuiderValue

        return (GuiderValue(model, positive, negative, float(cfg)),)


class BasicGuider:
    """GUIDER: the positive conditioning alone (no CFG), as for distilled and flow models."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = "sampling/custom_sampling/guiders"

    def get_guider(self, model, conditioning):
        from .noise_guiders import GuiderValue

        return (GuiderValue(model, conditioning, [], 1.0),)


class SamplerCustomAdvanced:
    """Sample a latent from NOISE, GUIDER, SAMPLER and SIGMAS; also returns the last x0 prediction."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "noise": ("NOISE",),
                "guider": ("GUIDER",),
                "sampler": ("SAMPLER",),
                "sigmas": ("SIGMAS",),
                "latent_image": ("LATENT",),
            }
        }

    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"
    CATEGORY = "sampling/custom_sampling"

    def sample(self, noise, guider, sampler, sigmas, latent_image):
        for name, value, method, source in (
            ("noise", noise, "generate_noise", "RandomNoise or DisableNoise"),
            ("guider", guider, "sample", "CFGGuider or BasicGuider"),
            ("sampler", sampler, "sample", "KSamplerSelect or LCMSampler"),
        ):
            if not hasattr(value, method):
                raise TypeError(f"SamplerCustomAdvanced: {name} must come from {source}, got {type(value).__name__}")
        return guider.sample(noise, sampler, sigmas, latent_image)
