"""LCM sampling nodes: the exact LCM schedule (SIGMAS), the LCM/TCD sampler (SAMPLER), and the
one-node LCMKSampler."""

from __future__ import annotations

from ..hosts import get_host
from ..hosts.node_declaration import CATEGORY
from .inputs import check_int, check_lcm_steps, check_range

MAX_SEED = 0xFFFFFFFFFFFFFFFF
STEPS = {"default": 4, "min": 1, "max": 50}
ORIGINAL_STEPS = {"default": 50, "min": 1, "max": 1000}
GAMMA = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}
STRENGTH = {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}

STEPS_TIP = "Sampling steps: LCM needs 1-8 (4 is typical)."
ORIGINAL_TIP = (
    "The grid the LCM was distilled on: every (1000 / N)-th training timestep. 50 for the "
    "published LCM-LoRAs; the steps are taken from this grid."
)
GAMMA_TIP = "0 = plain LCM. Above 0 = TCD with this gamma (stochasticity; 0.3 is TCD's default)."


def _check_schedule(node: str, steps: int, original_steps: int, strength: float, strength_name: str) -> None:
    check_int(node, "steps", steps, STEPS["min"], STEPS["max"])
    check_int(node, "original_inference_steps", original_steps, ORIGINAL_STEPS["min"], ORIGINAL_STEPS["max"])
    check_range(node, strength_name, strength, STRENGTH["min"], STRENGTH["max"])
    check_lcm_steps(node, steps, original_steps, strength, strength_name)


class LCMScheduler:
    """The LCM paper's skipping-step timesteps as SIGMAS of the model's own table (trailing 0)."""

    NODE_ID = "LCMAccel_Scheduler"
    DISPLAY_NAME = "LCM Scheduler"
    SEARCH_ALIASES = ("lcm", "latent consistency", "sigmas", "schedule")
    OLD_IDS = ("LCMScheduler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose noise schedule the sigmas are taken from."}),
                "steps": ("INT", {**STEPS, "tooltip": STEPS_TIP}),
                "original_inference_steps": ("INT", {**ORIGINAL_STEPS, "advanced": True, "tooltip": ORIGINAL_TIP}),
                "strength": (
                    "FLOAT",
                    {
                        **STRENGTH,
                        "tooltip": "img2img strength: 1.0 starts from pure noise, "
                        "lower keeps more of the input latent (use SamplerCustom add_noise).",
                    },
                ),
            }
        }

    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("The LCM sigmas, ending in 0.",)
    FUNCTION = "get_sigmas"
    CATEGORY = CATEGORY
    DESCRIPTION = "The exact LCM schedule as sigmas, for SamplerCustom."

    def get_sigmas(self, model, steps: int, original_inference_steps: int, strength: float):
        _check_schedule(self.NODE_ID, steps, original_inference_steps, strength, "strength")
        return (get_host().lcm_sigmas(model, steps, original_inference_steps, float(strength)),)


class LCMSampler:
    """The LCM multistep sampler (or TCD when gamma > 0), for SamplerCustom."""

    NODE_ID = "LCMAccel_Sampler"
    DISPLAY_NAME = "LCM Sampler"
    SEARCH_ALIASES = ("lcm", "tcd", "latent consistency", "sampler")
    OLD_IDS = ("LCMSampler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"gamma": ("FLOAT", {**GAMMA, "tooltip": GAMMA_TIP})}}

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The LCM / TCD sampler.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = "LCM multistep sampling (TCD when gamma > 0), with the consistency boundary condition."

    def get_sampler(self, gamma: float):
        check_range(self.NODE_ID, "gamma", gamma, GAMMA["min"], GAMMA["max"])
        return (get_host().lcm_sampler(float(gamma)),)


class LCMKSampler:
    """LCM sampling in one node: schedule, sampler, noise and img2img (denoise < 1)."""

    NODE_ID = "LCMAccel_KSampler"
    DISPLAY_NAME = "LCM KSampler"
    SEARCH_ALIASES = ("lcm", "tcd", "latent consistency", "ksampler", "fast", "4 steps")
    OLD_IDS = ("LCMKSampler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (with an LCM-LoRA, or a full LCM)."}),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "control_after_generate": True,
                        "tooltip": "The random seed of the initial and per-step noise.",
                    },
                ),
                "steps": ("INT", {**STEPS, "tooltip": STEPS_TIP}),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 30.0,
                        "step": 0.1,
                        "tooltip": "Guidance scale: 1.0 = one UNet pass per step (no negative); "
                        "1-2 suits LCM. For a full LCM UNet it is the embedded guidance.",
                    },
                ),
                "positive": ("CONDITIONING", {"tooltip": "What to include in the image."}),
                "negative": ("CONDITIONING", {"tooltip": "What to exclude (used only when cfg != 1)."}),
                "latent_image": (
                    "LATENT",
                    {"tooltip": "The latent to denoise: empty for txt2img, an encoded image for img2img."},
                ),
                "original_inference_steps": ("INT", {**ORIGINAL_STEPS, "advanced": True, "tooltip": ORIGINAL_TIP}),
                "gamma": ("FLOAT", {**GAMMA, "tooltip": GAMMA_TIP}),
                "denoise": (
                    "FLOAT",
                    {
                        **STRENGTH,
                        "tooltip": "1.0 = txt2img; below 1 = img2img strength: the "
                        "latent is noised to the first LCM timestep of that strength.",
                    },
                ),
            }
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "LCM / TCD sampling in one node, seeded as diffusers' LCM pipelines."

    def sample(
        self,
        model,
        seed: int,
        steps: int,
        cfg: float,
        positive,
        negative,
        latent_image,
        original_inference_steps: int = 50,
        gamma: float = 0.0,
        denoise: float = 1.0,
    ):
        node = self.NODE_ID
        check_int(node, "seed", seed, 0, MAX_SEED)
        check_range(node, "cfg", cfg, 0.0, 30.0)
        check_range(node, "gamma", gamma, GAMMA["min"], GAMMA["max"])
        _check_schedule(node, steps, original_inference_steps, denoise, "denoise")
        latent = get_host().lcm_ksample(
            model,
            seed,
            steps,
            float(cfg),
            positive,
            negative,
            latent_image,
            original_inference_steps,
            float(gamma),
            float(denoise),
        )
        return (latent,)
