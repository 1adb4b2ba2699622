"""Few-step accelerator families: for each, the timesteps, sampler, cfg and LoRA strength its authors
use, as the authors' own inference code sets up diffusers. Host-free data plus three functions:
`family_timesteps` (the schedule), `check_recipe` (the guard's warnings) and `detect_family`
(which family a LoRA file is, from its safetensors metadata or its file name).

The cfg values are ComfyUI's: one UNet pass at cfg 1. The authors' diffusers calls pass
`guidance_scale=0` (or 1), which diffusers also runs without classifier-free guidance.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .deterministic import trailing_timesteps
from .schedule import lcm_timesteps, tcd_timesteps

SAMPLER_KINDS = ("lcm", "tcd", "ddim", "euler")


@dataclass(frozen=True)
class Family:
    """One accelerator family.

    sampler: "lcm" (LCM multistep), "tcd" (with `gamma`, diffusers' eta), "ddim" / "euler"
    (deterministic, on the trailing grid). grid: "lcm" (LCM's skipping steps over
    original_inference_steps 50), "trailing", or "custom" (explicit `timesteps` per step count).
    lora_steps: the step counts the family's LoRA files were made for (empty: any in `steps`).
    unet_prediction: prediction type of a family's full-UNet variant where it differs from eps,
    by step count (e.g. SDXL-Lightning's 1-step UNet predicts x0).
    """

    key: str
    name: str
    bases: tuple[str, ...]
    sampler: str
    grid: str
    steps: tuple[int, ...]
    default_steps: int
    cfg: float
    cfg_max: float
    strength: float
    source: str
    gamma: float = 0.0
    lora_steps: tuple[int, ...] = ()
    timesteps: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    unet_prediction: Mapping[int, str] = field(default_factory=dict)
    name_patterns: tuple[str, ...] = ()

    @property
    def pure_noise_starts(self) -> tuple[int, ...]:
        """First timesteps of the explicit schedules: the authors start those runs from pure noise."""
        return tuple(sorted({steps[0] for steps in self.timesteps.values()}))


FAMILIES: dict[str, Family] = {
    family.key: family
    for family in (
        # huggingface.co/latent-consistency/lcm-lora-sdv1-5 and lcm-lora-sdxl model cards: LCMScheduler,
        # num_inference_steps=4 (2-8), guidance_scale=1.0 (1-2 in the LCM-LoRA report, arXiv 2311.05556)
        Family(
            "lcm",
            "LCM-LoRA",
            ("sd15", "sdxl"),
            "lcm",
            "lcm",
            (1, 2, 3, 4, 5, 6, 7, 8),
            4,
            1.0,
            2.0,
            1.0,
            "huggingface.co/latent-consistency/lcm-lora-sdv1-5",
            name_patterns=(r"lcm[-_]?lora", r"\blcm\b", r"^lcm"),
        ),
        # huggingface.co/h1t/TCD-SD15 and h1t/TCD-SDXL-LoRA: TCDScheduler.from_config(pipe.scheduler.config),
        # num_inference_steps=4, guidance_scale=0, eta=0.3
        Family(
            "tcd",
            "TCD-LoRA",
            ("sd15", "sdxl"),
            "tcd",
            "lcm",
            (1, 2, 3, 4, 5, 6, 7, 8),
            4,
            1.0,
            1.0,
            1.0,
            "huggingface.co/h1t/TCD-SDXL-LoRA",
            gamma=0.3,
            name_patterns=(r"\btcd\b", r"tcd[-_]"),
        ),
        # huggingface.co/ByteDance/Hyper-SD (Hyper-SD15-{2,4,8}steps-lora, Hyper-SDXL-{2,4,8}steps-lora):
        # DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing"), guidance_scale=0,
        # num_inference_steps equal to the LoRA's step count
        Family(
            "hyper_sd",
            "Hyper-SD N-step LoRA",
            ("sd15", "sdxl"),
            "ddim",
            "trailing",
            (1, 2, 4, 8),
            4,
            1.0,
            1.0,
            1.0,
            "huggingface.co/ByteDance/Hyper-SD",
            lora_steps=(2, 4, 8),
            name_patterns=(r"hyper[-_]?sd(15|xl)?[-_]\d+steps?[-_]lora",),
        ),
        # huggingface.co/ByteDance/Hyper-SD (Hyper-SD15-1step-lora, Hyper-SDXL-1step-lora, the "unified" LoRA):
        # TCDScheduler.from_config(pipe.scheduler.config), eta=1.0 (lower eta for more steps), guidance_scale=0,
        # 1-8 steps; the 1-step UNet (Hyper-SDXL-1step-Unet) runs LCMScheduler with timesteps=[800]
        Family(
            "hyper_sd_unified",
            "Hyper-SD 1-step unified LoRA",
            ("sd15", "sdxl"),
            "tcd",
            "lcm",
            (1, 2, 3, 4, 5, 6, 7, 8),
            1,
            1.0,
            1.0,
            1.0,
            "huggingface.co/ByteDance/Hyper-SD",
            gamma=1.0,
            name_patterns=(r"hyper[-_]?sd(15|xl)?[-_]1steps?[-_]lora",),
        ),
        # huggingface.co/ByteDance/Hyper-SD (Hyper-SD15-8steps-CFG-lora, Hyper-SDXL-{8,12}steps-CFG-lora):
        # DDIM trailing as above, guidance_scale=5.0 ("recommended range 5-8"), with a negative prompt
        Family(
            "hyper_sd_cfg",
            "Hyper-SD CFG-preserving LoRA",
            ("sd15", "sdxl"),
            "ddim",
            "trailing",
            (8, 12),
            8,
            5.0,
            8.0,
            1.0,
            "huggingface.co/ByteDance/Hyper-SD",
            lora_steps=(8, 12),
            name_patterns=(r"hyper[-_]?sd(15|xl)?[-_]\d+steps?[-_]cfg[-_]lora",),
        ),
        # huggingface.co/ByteDance/SDXL-Lightning: EulerDiscreteScheduler.from_config(pipe.scheduler.config,
        # timestep_spacing="trailing"), guidance_scale=0; LoRAs for 2/4/8 steps; the 1-step UNet is
        # x0-prediction (prediction_type="sample")
        Family(
            "lightning",
            "SDXL-Lightning",
            ("sdxl",),
            "euler",
            "trailing",
            (1, 2, 4, 8),
            4,
            1.0,
            1.0,
            1.0,
            "huggingface.co/ByteDance/SDXL-Lightning",
            lora_steps=(2, 4, 8),
            unet_prediction={1: "sample"},
            name_patterns=(r"lightning",),
        ),
        # huggingface.co/tianweiy/DMD2: LCMScheduler.from_config(pipe.scheduler.config), guidance_scale=0,
        # timesteps=[999, 749, 499, 249] for the 4-step LoRA (dmd2_sdxl_4step_lora_fp16), [399] for the
        # 1-step UNet
        Family(
            "dmd2",
            "DMD2",
            ("sdxl",),
            "lcm",
            "custom",
            (1, 4),
            4,
            1.0,
            1.0,
            1.0,
            "huggingface.co/tianweiy/DMD2",
            lora_steps=(4,),
            timesteps={4: (999, 749, 499, 249), 1: (399,)},
            name_patterns=(r"dmd2",),
        ),
        # github.com/G-U-N/Phased-Consistency-Model README and huggingface.co/wangfuyun/PCM_Weights:
        # deterministic DDIM with timestep_spacing="trailing" ("stochastic samplers are not aligned with the
        # training"); smallcfg LoRAs for 2/4/8 steps at cfg 1-2
        Family(
            "pcm",
            "PCM (small cfg)",
            ("sd15", "sdxl"),
            "ddim",
            "trailing",
            (1, 2, 4, 8, 16),
            4,
            1.0,
            2.0,
            1.0,
            "github.com/G-U-N/Phased-Consistency-Model",
            lora_steps=(2, 4, 8),
            name_patterns=(r"pcm[-_].*smallcfg",),
        ),
        # same source: normalcfg LoRAs for 8/16 steps, meant for an ordinary cfg with negative prompts
        Family(
            "pcm_normalcfg",
            "PCM (normal cfg)",
            ("sd15", "sdxl"),
            "ddim",
            "trailing",
            (8, 16),
            16,
            5.0,
            7.5,
            1.0,
            "github.com/G-U-N/Phased-Consistency-Model",
            lora_steps=(8, 16),
            name_patterns=(r"pcm[-_].*normalcfg",),
        ),
        # huggingface.co/jasperai/flash-sd and jasperai/flash-sdxl: LCMScheduler (timestep_spacing="trailing",
        # which LCMScheduler.set_timesteps does not read), num_inference_steps=4, guidance_scale=0
        Family(
            "flash",
            "Flash Diffusion",
            ("sd15", "sdxl"),
            "lcm",
            "lcm",
            (2, 3, 4, 5, 6, 7, 8),
            4,
            1.0,
            1.0,
            1.0,
            "huggingface.co/jasperai/flash-sdxl",
            name_patterns=(r"flash[-_]?(sd|diffusion)",),
        ),
    )
}

METADATA_KEYS = ("lcm_accel.accelerator", "modelspec.title", "ss_output_name", "modelspec.description")


def get_family(key: str) -> Family:
    """The family named `key`, or a ValueError listing the known keys."""
    if key not in FAMILIES:
        raise ValueError(f"unknown accelerator family {key!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def family_timesteps(family: Family, steps: int, denoise: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The family's timesteps for `steps` (img2img: the last int(steps * denoise) of them for the
    trailing and custom grids; LCM strength semantics for the LCM grid), int64 descending."""
    if family.grid == "custom":
        if steps not in family.timesteps:
            raise ValueError(
                f"{family.name} has explicit timesteps only for steps {sorted(family.timesteps)}, got steps={steps}"
            )
        with warnings.catch_warnings():  # the authors' own timesteps are off LCM's grid on purpose
            warnings.simplefilter("ignore")
            return lcm_timesteps(None, 50, denoise, num_train_timesteps, timesteps=list(family.timesteps[steps]))
    if family.grid == "lcm":
        make = tcd_timesteps if family.sampler == "tcd" else lcm_timesteps
        return make(steps, 50, denoise, num_train_timesteps)
    full = trailing_timesteps(steps, num_train_timesteps)
    kept = int(steps * denoise)
    if kept < 1:
        raise ValueError(
            f"denoise={denoise} keeps none of the {steps} steps (int(steps * denoise) == 0); raise denoise or steps"
        )
    return full[steps - kept :]


@dataclass(frozen=True)
class Detection:
    """What `detect_family` found: the family, the step count the file was made for (if its name
    says), and where the answer came from."""

    family: str
    lora_steps: int | None
    reason: str


def _step_count(text: str) -> int | None:
    found = re.search(r"(\d+)[-_ ]?steps?", text)
    return int(found.group(1)) if found else None


def detect_family(file_name: str, metadata: Mapping[str, str] | None = None) -> Detection | None:
    """The family of a LoRA file where its metadata or name says so unambiguously, else None.
    An explicit `lcm_accel.accelerator` metadata entry wins; then the other metadata fields and the
    file name are matched against each family's published file names (most specific first)."""
    metadata = dict(metadata or {})
    declared = metadata.get("lcm_accel.accelerator")
    if declared in FAMILIES:
        return Detection(declared, None, "metadata lcm_accel.accelerator")
    texts = [(f"metadata {key}", str(metadata[key])) for key in METADATA_KEYS[1:] if metadata.get(key)]
    texts.append(("file name", file_name.rsplit("/", 1)[-1]))
    for where, text in texts:
        lowered = text.lower()
        matches = [
            key
            for key, family in FAMILIES.items()
            if any(re.search(pattern, lowered) for pattern in family.name_patterns)
        ]
        # the Hyper-SD names nest: a CFG or 1-step name also matches the N-step pattern
        if "hyper_sd" in matches and len(matches) > 1:
            matches.remove("hyper_sd")
        if len(matches) == 1:
            return Detection(matches[0], _step_count(lowered), f"{where} {text!r}")
    return None


def check_recipe(
    family: Family, steps: int | None = None, cfg: float | None = None, lora_steps: int | None = None
) -> list[str]:
    """The guard: one-line warnings (empty when all is as the authors recommend) for a cfg above the
    family's range, a step count the family or its LoRA file was not made for."""
    found = []
    if cfg is not None and cfg > family.cfg_max:
        found.append(
            f"{family.name}: cfg {cfg:g} is above the {family.cfg_max:g} it was made for; "
            f"recommended cfg {family.cfg:g}, steps {family.default_steps}"
        )
    made_for = (lora_steps,) if lora_steps else family.lora_steps
    if steps is not None and made_for and steps not in made_for:
        found.append(
            f"{family.name}: the LoRA was made for {_counts(made_for)} steps, got steps={steps}; "
            f"recommended steps {made_for[0] if lora_steps else family.default_steps}, "
            f"cfg {family.cfg:g}"
        )
        if steps in family.unet_prediction:
            found[-1] += (
                f"; {steps}-step {family.name} is a full UNet predicting "
                f"{family.unet_prediction[steps]} (ModelSamplingDiscrete x0 in ComfyUI)"
            )
    elif steps is not None and steps not in family.steps:
        found.append(
            f"{family.name}: {steps} steps is outside the {_counts(family.steps)} it runs; "
            f"recommended steps {family.default_steps}, cfg {family.cfg:g}"
        )
    return found


def _counts(values: tuple[int, ...]) -> str:
    return "/".join(str(value) for value in values)


def mix_warning(families: list[str]) -> str | None:
    """The warning for a mix holding more than one accelerator LoRA (their deltas add up: neither
    family's schedule then fits), or None."""
    if len(families) < 2:
        return None
    names = ", ".join(FAMILIES[key].name if key in FAMILIES else key for key in families)
    return (
        f"{len(families)} accelerator LoRAs in one mix ({names}): use one accelerator LoRA per model; "
        f"the schedule of the first ({families[0]}) is used"
    )
