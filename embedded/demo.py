"""The demo on the embedded model: the example workflows, run headless at the model's 64x64 size.

Writes the LCM-LoRA 4-step picture (example_workflows/lcm_lora_txt2img.json) to the output folder and a
contact sheet beside it: the teacher (25 steps, CFG), the base at 4 steps (DDIM + CFG), the
LCM-LoRA at 4 steps and the LCM-LoRA + style LoRA through the LCMAdapterMixer node
(example_workflows/lcm_lora_style_mixer.json), each labelled with its sampling time and what the scorer
reads in it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import RESOLUTION, SCORER_FILE, shipped_file
from .evaluate import TEACHER_CFG, TEACHER_STEPS

PACK_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROMPT = "a blue circle on a white background, center"
SHEET_NAME = "embedded_contact_sheet.png"
TILE = 256


@dataclass
class Panel:
    """One picture of the contact sheet: which workflow, with which sampler settings."""

    label: str
    workflow: str
    sampler: dict  # inputs of the sampler node to set


PANELS = (
    Panel(
        f"teacher {TEACHER_STEPS} steps, CFG {TEACHER_CFG:g}",
        "baseline_25step_cfg7.json",
        {"steps": TEACHER_STEPS, "cfg": TEACHER_CFG, "sampler_name": "ddim", "scheduler": "normal"},
    ),
    Panel(
        f"base 4 steps DDIM, CFG {TEACHER_CFG:g}",
        "baseline_25step_cfg7.json",
        {"steps": 4, "cfg": TEACHER_CFG, "sampler_name": "ddim", "scheduler": "normal"},
    ),
    Panel("LCM-LoRA 4 steps", "lcm_lora_txt2img.json", {}),
    Panel("LCM-LoRA + style 0.8 (mixer)", "lcm_lora_style_mixer.json", {}),
)
MAIN_PANEL = 2


def _overrides(prompt: dict, text: str, seed: int, sampler: dict) -> list[str]:
    """`--set` assignments: the prompt (positive; empty negative), 64x64 latents, the seed and the
    panel's sampler settings, found by following the sampler node's links."""
    sets = []
    for node_id, node in prompt.items():
        inputs = node.get("inputs", {})
        if node.get("class_type") == "EmptyLatentImage":
            sets += [f"{node_id}.width={RESOLUTION}", f"{node_id}.height={RESOLUTION}"]
        if "positive" in inputs and "negative" in inputs:  # a sampler
            pos, neg = inputs["positive"][0], inputs["negative"][0]
            sets += [f"{pos}.text={text}", f"{neg}.text="]
            seed_name = "noise_seed" if "noise_seed" in inputs else "seed"
            sets.append(f"{node_id}.{seed_name}={seed}")
            sets += [f"{node_id}.{k}={v}" for k, v in sampler.items()]
    return sets


def run_workflow(path: Path, models: Path, out: Path, text: str, seed: int, sampler: dict) -> tuple[Path, float]:
    """Run one workflow headless with the demo's overrides; (the PNG it saved, seconds)."""
    from ..harness.executor import Executor
    from ..harness.registry import default_registry
    from ..harness.runner import api_prompt, apply_overrides
    from ..harness.workflow_io import load_workflow
    from ..runtime.model_paths import ModelPaths, use_model_paths

    paths = ModelPaths(models / "models", input_dir=models / "input", output_dir=out)
    with use_model_paths(paths):  # a UI workflow's conversion reads the model lists
        registry = default_registry()
        prompt, extra = api_prompt(load_workflow(path), registry)
        apply_overrides(prompt, _overrides(prompt, text, seed, sampler), registry, extra)
        start = time.perf_counter()
        result = Executor(registry, paths).run(prompt, extra_pnginfo=extra)
        seconds = time.perf_counter() - start
    saved = [
        item for ui in result.ui.values() for item in ui.get("images", []) if item.get("type", "output") == "output"
    ]
    if len(saved) != 1:
        raise RuntimeError(f"{path.name}: expected one saved image, got {len(saved)}")
    return out / saved[0].get("subfolder", "") / saved[0]["filename"], seconds


def contact_sheet(images: list[Path], labels: list[str], path: Path) -> Path:
    """The pictures side by side, enlarged (nearest neighbour) to TILE px, a label above each."""
    from PIL import Image, ImageDraw

    line = 14
    sheet = Image.new("RGB", (TILE * len(images), TILE + 3 * line + 6), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image_path, label) in enumerate(zip(images, labels)):
        with Image.open(image_path) as image:
            sheet.paste(image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST), (i * TILE, 3 * line + 6))
        for j, text in enumerate(label.split("\n")[:3]):
            draw.text((i * TILE + 4, 2 + j * line), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def read_png(path: Path) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def run_embedded_demo(out: str | Path, text: str = DEFAULT_PROMPT, seed: int = 42) -> int:
    """The demo (see the module docstring); prints where the files are. Returns 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8x8 latents: threads only add overhead (and lose badly on a busy machine)
    try:
        return _run(Path(out), text, seed)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, text: str, seed: int) -> int:
    from .models_dir import embedded_models_dir
    from .scorer import load_scorer, verdicts

    root = embedded_models_dir()
    print(f"no --models given: using the embedded model trained by this project ({root})")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:  # warm-up: files read, caches filled, not timed below
        main_panel = PANELS[MAIN_PANEL]
        run_workflow(
            PACK_ROOT / "example_workflows" / main_panel.workflow, root, Path(scratch), text, seed, main_panel.sampler
        )
    print(f"loaded the embedded model and warmed up in {time.perf_counter() - start:.2f} s")
    scorer = load_scorer(shipped_file(SCORER_FILE))
    parts, labels = [], []
    main_image = None
    for index, panel in enumerate(PANELS):
        target = out if index == MAIN_PANEL else out / "embedded_contact_sheet_parts"
        image, seconds = run_workflow(
            PACK_ROOT / "example_workflows" / panel.workflow, root, target, text, seed, panel.sampler
        )
        (verdict,) = verdicts(scorer, read_png(image))
        seen = f"{verdict.colour} {verdict.shape}, {verdict.position}" + (
            ", outlined" if verdict.style == "outlined" else ""
        )
        labels.append(f"{panel.label}\n{seconds:.2f} s\nscorer: {seen}")
        parts.append(image)
        print(f"{panel.label}: {seconds:.2f} s, scorer reads: {seen}  ({image})")
        if index == MAIN_PANEL:
            main_image = image
    sheet = contact_sheet(parts, labels, out / SHEET_NAME)
    print(f"prompt: {text!r}")
    print(f"saved {main_image}")
    print(f"contact sheet: {sheet}")
    return 0
