"""Accelerator-family nodes: a LoRA loader that records the family on the MODEL (chosen, or `auto` from
the file's metadata or name), and the family's exact schedule as SIGMAS, its sampler as SAMPLER, and
both in one KSampler. The guard warns (one log line naming the recommended values) and never stops.
The family table (`lcm_scheduler.families`) is imported on use: importing the nodes loads no torch."""

from __future__ import annotations

from ..hosts import get_host
from ..hosts.accelerator_record import accelerator_record, with_accelerator_record
from ..hosts.node_declaration import CATEGORY
from .accelerator_guard import LOGGER, detect_lora_family, warn
from .inputs import check_int, check_lora_choice, check_range
from .lora_nodes import WEIGHT_RANGE, add_clip_part, clip_input
from .sampling_nodes import MAX_SEED, STRENGTH

AUTO = "auto"
FROM_MODEL = "from_model"
STEPS = {"default": 4, "min": 1, "max": 50}


def _families():
    from ..lcm_scheduler import families

    return families


def family_tip() -> str:
    return "The accelerator family: " + "; ".join(
        f"{key} = {family.name}" for key, family in _families().FAMILIES.items()
    )


def resolve_family(node: str, model, family: str):
    """(Family, the LoRA's step count if known) to sample with: the one chosen on the node, or the one
    recorded on the MODEL."""
    get_family = _families().get_family
    record = accelerator_record(model)
    if family != FROM_MODEL:
        same = record is not None and record["family"] == family
        return get_family(family), record.get("lora_steps") if same else None
    if record is None:
        raise ValueError(
            f"{node}: family is {FROM_MODEL!r} but the MODEL has no accelerator family recorded; "
            f"load the LoRA with the Accelerator LoRA Loader (or the LCM Adapter Mixer), or choose the family here"
        )
    return get_family(record["family"]), record.get("lora_steps")


def _family_input(default: str) -> tuple:
    choices = [FROM_MODEL, *_families().FAMILIES]
    return (
        choices,
        {"default": default, "tooltip": f"{FROM_MODEL}: the family the loader recorded on the MODEL. " + family_tip()},
    )


def family_sigmas(host, node: str, model, family: str, steps: int, denoise: float, cfg: float | None = None):
    """The chosen family's exact sigmas for `steps` (after the guard), and its Family."""
    chosen, lora_steps = resolve_family(node, model, family)
    warn([f"{node}: {message}" for message in _families().check_recipe(chosen, steps, cfg, lora_steps)])
    timesteps = _families().family_timesteps(chosen, steps, denoise)
    return host.timestep_sigmas(model, timesteps), chosen


class LCMAcceleratorLoader:
    """Apply a few-step accelerator LoRA (LCM, TCD, Hyper-SD, Lightning, DMD2, PCM, Flash) and record
    its family on the MODEL, for LCMAcceleratorScheduler / Sampler / KSampler."""

    NODE_ID = "LCMAccel_AcceleratorLoader"
    DISPLAY_NAME = "Accelerator LoRA Loader"
    SEARCH_ALIASES = ("lcm", "tcd", "hyper-sd", "lightning", "dmd2", "pcm", "flash", "turbo", "few step", "lora")
    OLD_IDS = ("LCMAcceleratorLoader",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to accelerate."}),
                "lora_name": (get_host().lora_names(), {"tooltip": "The accelerator LoRA file (models/loras)."}),
                "family": (
                    [AUTO, *_families().FAMILIES],
                    {
                        "default": AUTO,
                        "tooltip": f"{AUTO}: read the "
                        "family from the file's metadata or its published file name (the log says which it "
                        "picked). " + family_tip(),
                    },
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        **WEIGHT_RANGE,
                        "tooltip": "How strongly the LoRA is applied (1.0 as the authors use it).",
                    },
                ),
            },
            "optional": {
                "clip": clip_input(),
                "strength_clip": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        **WEIGHT_RANGE,
                        "tooltip": "Strength of the LoRA's text-encoder part (if any) on the CLIP.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = (
        "The model with the LoRA applied and its family recorded.",
        "The CLIP with the LoRA's text-encoder part (None when no CLIP is connected).",
    )
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a few-step accelerator LoRA and records its family, so the family's exact schedule is used."

    def load(self, model, lora_name: str, family: str, strength: float, clip=None, strength_clip: float = 1.0):
        node = self.NODE_ID
        host = get_host()
        families = _families()
        FAMILIES, Detection, mix_warning = families.FAMILIES, families.Detection, families.mix_warning
        check_lora_choice(node, "lora_name", lora_name, host.lora_names(), allow_none=False)
        check_range(node, "strength", strength, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        check_range(node, "strength_clip", strength_clip, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        detection = detect_lora_family(host, lora_name)
        if family == AUTO:
            if detection is None:
                raise ValueError(
                    f"{node}: family auto cannot tell which accelerator {lora_name!r} is (no known "
                    f"metadata or published file name); choose the family: {', '.join(FAMILIES)}"
                )
            LOGGER.warning(
                "%s: %s is %s (from its %s)", node, lora_name, FAMILIES[detection.family].name, detection.reason
            )
            chosen = detection
        else:
            families.get_family(family)
            steps = detection.lora_steps if detection and detection.family == family else None
            chosen = Detection(family, steps, "chosen on the node")
        previous = accelerator_record(model)
        message = mix_warning(([previous["family"]] if previous else []) + [chosen.family])
        if message:
            warn([f"{node}: {message}"])
        patched = host.add_loras(model, [(lora_name, float(strength))], None)
        if FAMILIES[chosen.family].sampler == "lcm" and FAMILIES[chosen.family].grid == "lcm":
            # ComfyUI's "lcm" sampling mode keeps only LCM's 50-point grid: off-grid timesteps (DMD2's
            # 749, 249) would be read as their grid neighbours, so those families keep the full table
            patched = host.set_lcm_sampling(patched)
        if previous is None:
            patched = with_accelerator_record(patched, chosen.family, lora_name, chosen.lora_steps, chosen.reason)
        return (patched, add_clip_part(host, clip, [(lora_name, float(strength_clip))]))


class LCMAcceleratorScheduler:
    """The accelerator family's exact timesteps as SIGMAS of the model's own table (trailing 0)."""

    NODE_ID = "LCMAccel_AcceleratorScheduler"
    DISPLAY_NAME = "Accelerator Scheduler"
    SEARCH_ALIASES = ("lcm", "tcd", "hyper-sd", "lightning", "dmd2", "pcm", "turbo", "sigmas")
    OLD_IDS = ("LCMAcceleratorScheduler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (its recorded family, and its noise schedule)."}),
                "family": _family_input(FROM_MODEL),
                "steps": (
                    "INT",
                    {**STEPS, "tooltip": "Sampling steps; the log warns when the LoRA was made for another count."},
                ),
                "denoise": (
                    "FLOAT",
                    {
                        **STRENGTH,
                        "tooltip": "1.0 = txt2img; below 1 keeps the last "
                        "int(steps * denoise) timesteps (LCM grid: LCM's img2img strength).",
                    },
                ),
            }
        }

    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("The family's sigmas, ending in 0.",)
    FUNCTION = "get_sigmas"
    CATEGORY = CATEGORY
    DESCRIPTION = "The exact timesteps an accelerator family was trained for, as sigmas for SamplerCustom."

    def get_sigmas(self, model, family: str, steps: int, denoise: float = 1.0):
        node = self.NODE_ID
        check_int(node, "steps", steps, STEPS["min"], STEPS["max"])
        check_range(node, "denoise", denoise, STRENGTH["min"], STRENGTH["max"])
        return (family_sigmas(get_host(), node, model, family, steps, float(denoise))[0],)


class LCMAcceleratorSampler:
    """The accelerator family's sampler (LCM, TCD with its gamma, or deterministic DDIM / Euler)."""

    NODE_ID = "LCMAccel_AcceleratorSampler"
    DISPLAY_NAME = "Accelerator Sampler"
    SEARCH_ALIASES = ("lcm", "tcd", "hyper-sd", "lightning", "dmd2", "pcm", "turbo", "sampler")
    OLD_IDS = ("LCMAcceleratorSampler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose recorded family is used."}),
                "family": _family_input(FROM_MODEL),
            }
        }

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The family's sampler.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = "The sampler an accelerator family was trained for, for SamplerCustom."

    def get_sampler(self, model, family: str):
        chosen, _ = resolve_family(self.NODE_ID, model, family)
        return (get_host().accelerator_sampler(chosen.sampler, chosen.gamma, chosen.pure_noise_starts),)


class LCMAcceleratorKSampler:
    """Sampling with the accelerator family's exact schedule and sampler in one node."""

    NODE_ID = "LCMAccel_AcceleratorKSampler"
    DISPLAY_NAME = "Accelerator KSampler"
    SEARCH_ALIASES = ("lcm", "tcd", "hyper-sd", "lightning", "dmd2", "pcm", "turbo", "ksampler", "few step")
    OLD_IDS = ("LCMAcceleratorKSampler",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model with an accelerator LoRA."}),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "control_after_generate": True,
                        "tooltip": "The random seed of the initial (and per-step) noise.",
                    },
                ),
                "steps": ("INT", {**STEPS, "tooltip": "Sampling steps (the family's are in the README table)."}),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 30.0,
                        "step": 0.1,
                        "tooltip": "Guidance scale: 1.0 = one UNet pass per step; the log warns above "
                        "the family's range.",
                    },
                ),
                "positive": ("CONDITIONING", {"tooltip": "What to include in the image."}),
                "negative": ("CONDITIONING", {"tooltip": "What to exclude (used only when cfg != 1)."}),
                "latent_image": ("LATENT", {"tooltip": "Empty for txt2img, an encoded image for img2img."}),
                "family": _family_input(FROM_MODEL),
                "denoise": ("FLOAT", {**STRENGTH, "tooltip": "1.0 = txt2img; below 1 = img2img."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "Samples with the exact timesteps, sampler and guard of the model's accelerator family."

    def sample(
        self,
        model,
        seed: int,
        steps: int,
        cfg: float,
        positive,
        negative,
        latent_image,
        family: str = FROM_MODEL,
        denoise: float = 1.0,
    ):
        node = self.NODE_ID
        check_int(node, "seed", seed, 0, MAX_SEED)
        check_int(node, "steps", steps, STEPS["min"], STEPS["max"])
        check_range(node, "cfg", cfg, 0.0, 30.0)
        check_range(node, "denoise", denoise, STRENGTH["min"], STRENGTH["max"])
        host = get_host()
        sigmas, chosen = family_sigmas(host, node, model, family, steps, float(denoise), float(cfg))
        sampler = host.accelerator_sampler(chosen.sampler, chosen.gamma, chosen.pure_noise_starts)
        return (host.custom_sample(model, seed, float(cfg), positive, negative, sampler, sigmas, latent_image),)
