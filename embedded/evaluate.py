"""Sampling and scoring on the embedded model, through the standalone host's own code paths.

`EmbeddedPipeline` loads the shipped checkpoint with the checkpoint loader users' files go through,
adds LoRAs as the loader / mixer nodes do (`hosts.standalone.lora.add_loras`: the LCM-LoRA and the
style LoRA in one combined patch), and samples as the KSampler (DDIM + CFG) and LCM sampler nodes
do. `measure` turns a batch of pictures into prompt accuracy, style rate and distance to the
teacher. Used by the tests, the benchmark and the build's own score sheet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import BASE_FILE, FILES, LCM_LORA_FILE, SCORER_FILE, STYLE_LORA_FILE
from .scorer import Verdict, load_scorer, verdicts
from .world import COLOURS, POSITIONS, SHAPES, Scene, caption

TEACHER_STEPS = 25
TEACHER_CFG = 4.0  # the guidance the LCM-LoRA was distilled with (build.TEACHER_CFG)
PAPER_WEIGHTS = {"style": 0.8, "lcm": 1.0}  # LCM-LoRA paper, section 4.3


def eval_scenes(count: int = 24, seed: int = 1234) -> list[Scene]:
    """Balanced prompts: every shape and colour equally often, positions / backgrounds drawn."""
    generator = torch.Generator().manual_seed(seed)
    colours, positions, backgrounds = list(COLOURS), list(POSITIONS), ["white", "black", "gray"]
    out = []
    for i in range(count):
        shape, colour = SHAPES[i % len(SHAPES)], colours[(i // len(SHAPES) + i) % len(colours)]
        p, b = torch.randint(len(positions), (1,), generator=generator), torch.randint(3, (1,), generator=generator)
        out.append(Scene(shape, colour, positions[int(p)], backgrounds[int(b)]))
    return out


@dataclass
class Samples:
    """Pictures of one method: (N, 3, 64, 64) in [0, 1], seconds per picture, UNet calls per picture."""

    images: torch.Tensor
    seconds_per_image: float
    unet_calls: int


class EmbeddedPipeline:
    """The shipped files, loaded once; `sample(...)` for each method the claims compare."""

    def __init__(self, files: str | Path = FILES):
        from ..runtime.checkpoints import load_checkpoint
        from ..runtime.lora_files import load_lora_cached

        files = Path(files)
        for name in (BASE_FILE, LCM_LORA_FILE, STYLE_LORA_FILE, SCORER_FILE):
            if not (files / name).is_file():
                raise FileNotFoundError(
                    f"{files / name} is missing: build the embedded model with `python -m lcm_accel.embedded.build`"
                )
        self.model, self.clip, self.vae = load_checkpoint(files / BASE_FILE)
        self.lcm_lora = load_lora_cached(files / LCM_LORA_FILE)
        self.style_lora = load_lora_cached(files / STYLE_LORA_FILE)
        self.scorer = load_scorer(files / SCORER_FILE)
        self._text: dict[str, torch.Tensor] = {}

    def _encode(self, prompt: str) -> torch.Tensor:
        from ..runtime.text_encoding import encode_prompt

        if prompt not in self._text:
            self._text[prompt] = encode_prompt(self.clip, prompt)[0]
        return self._text[prompt]

    def conditioning(self, prompts: list[str]) -> tuple[list, list]:
        """(positive, negative) CONDITIONING for a batch: one prompt per picture, empty negative."""
        positive = torch.cat([self._encode(p) for p in prompts])
        negative = self._encode("").expand(len(prompts), -1, -1)
        return [[positive, {}]], [[negative, {}]]

    def with_loras(self, lcm: float = 0.0, style: float = 0.0):
        """The base MODEL with the LCM-LoRA and / or the style LoRA at these weights (one mixed patch)."""
        from ..runtime.lora_state import add_loras

        loras = [(lora, w) for lora, w in ((self.lcm_lora, lcm), (self.style_lora, style)) if w]
        return add_loras(self.model, loras) if loras else self.model.clone()

    @torch.no_grad()
    def sample(
        self,
        scenes: list[Scene],
        seed: int,
        steps: int,
        lcm: float = 0.0,
        style: float = 0.0,
        cfg: float | None = None,
        deepcache: int | None = None,
        quantize: str | None = None,
        lcm_sampler: bool | None = None,
    ) -> Samples:
        """Pictures of `scenes` (one batch, noise from `seed`): with the LCM sampler (guidance 1
        unless `cfg`; the default when `lcm` > 0, `lcm_sampler=True` runs it on the base without
        the LoRA), else KSampler "ddim" + "normal" with `cfg` (default TEACHER_CFG).
        `deepcache`: cache interval of the DeepCache node; `quantize`: a low-bit format."""
        from ..feature_cache import DeepCacheSettings
        from ..hosts.standalone.deepcache import apply_deepcache
        from ..hosts.standalone.sampling_pipeline import common_ksampler, lcm_ksample
        from ..runtime.quantized import quantize_model
        from ..runtime.vae_codec import decode

        model = self.with_loras(lcm, style)
        if quantize:
            model = quantize_model(model, quantize)
        if deepcache:
            model = apply_deepcache(model, DeepCacheSettings(interval=deepcache, branch=0))
        positive, negative = self.conditioning([caption(s) for s in scenes])
        latent = {"samples": torch.zeros(len(scenes), 4, 8, 8)}
        start = time.perf_counter()
        if lcm_sampler or (lcm_sampler is None and lcm):
            guidance = 1.0 if cfg is None else cfg
            out = lcm_ksample(model, seed, steps, guidance, positive, negative, latent)
        else:
            guidance = TEACHER_CFG if cfg is None else cfg
            (out,) = common_ksampler(model, seed, steps, guidance, "ddim", "normal", positive, negative, latent)
        images = decode(self.vae, out["samples"]).movedim(-1, 1)
        seconds = (time.perf_counter() - start) / len(scenes)
        calls = steps * (1 if guidance == 1.0 else 2)
        return Samples(images, seconds, calls)

    def read(self, images: torch.Tensor) -> list[Verdict]:
        return verdicts(self.scorer, images)


@dataclass
class Measured:
    accuracy: float  # shape and colour as the prompt asks
    position: float  # position as the prompt asks
    style: float  # fraction scored "outlined"
    distance: float | None  # RMS pixel distance to the reference pictures (same prompts and seeds)


def measure(
    pipeline: EmbeddedPipeline, scenes: list[Scene], images: torch.Tensor, reference: torch.Tensor | None = None
) -> Measured:
    """The scorer's reading of `images` against `scenes` (and the distance to `reference`)."""
    read = pipeline.read(images)
    n = len(scenes)
    distance = None if reference is None else float((images - reference).pow(2).mean(dim=(1, 2, 3)).sqrt().mean())
    return Measured(
        sum(v.matches(s) for v, s in zip(read, scenes)) / n,
        sum(v.position == s.position for v, s in zip(read, scenes)) / n,
        sum(v.style == "outlined" for v in read) / n,
        distance,
    )


def build_scores(
    files: str | Path = FILES, count: int = 48, seeds: tuple[int, ...] = (0, 1), progress: bool = False
) -> dict[str, float]:
    """The score sheet the build writes into build_info.json (and the tests compare with)."""
    from ..runtime.checkpoints import clear_cache

    clear_cache()
    pipeline = EmbeddedPipeline(files)
    scenes = eval_scenes(count)
    runs = {
        "teacher_25_cfg": dict(steps=TEACHER_STEPS),
        "base_4_cfg": dict(steps=4),
        "lcm_4": dict(steps=4, lcm=1.0),
        "lcm_sampler_no_lora_4": dict(steps=4, lcm_sampler=True),
        "style_teacher_25": dict(steps=TEACHER_STEPS, style=PAPER_WEIGHTS["style"]),
        "style_lcm_4": dict(steps=4, lcm=PAPER_WEIGHTS["lcm"], style=PAPER_WEIGHTS["style"]),
    }
    scores: dict[str, float] = {}
    for name, kwargs in runs.items():
        found = [measure(pipeline, scenes, pipeline.sample(scenes, seed, **kwargs).images) for seed in seeds]
        keys = ("style", "accuracy") if name.startswith("style") else ("accuracy", "style")
        for key in keys:  # the style rate without the style LoRA: the scorer's false "outlined" rate
            scores[f"{name}_{key}"] = round(sum(getattr(m, key) for m in found) / len(found), 4)
    return scores
