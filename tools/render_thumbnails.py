"""Render the template browser's thumbnails: `example_workflows/<name>.jpg` beside each `<name>.json`.

    python tools/render_thumbnails.py [NAME ...]      # no NAME: every example workflow

Runs every example workflow headless (the harness, as `python -m lcm_accel demo` does) on the
embedded model the project ships (docs/embedded-model.md), on one torch thread, and saves each
picture enlarged (bicubic) to 256x256 as a JPEG (quality 85, 3-14 kB). About 13 s for all 16 on
this project's shared 2-core CPU (under 1 s of sampling each; the rest is imports and model
loading). Deterministic: a re-run writes the same bytes on the same machine.

What each picture is:
- The workflows run unchanged except for the demo's overrides (`lcm_accel.embedded.demo`): the
  model's 64x64 size in EmptyLatentImage, a prompt from the embedded model's world (one shape,
  colour, position and background per workflow, so the thumbnails differ; the workflows' own
  prompts mean nothing to it), an empty negative prompt and seed 42. Steps, cfg, samplers, LoRA
  strengths, DeepCache, quantization and img2img denoise are the workflow's own.
- SD1.5 workflows: the embedded base under `v1-5-pruned-emaonly.safetensors`, its LCM-LoRA under
  `lcm-lora-sdv1-5.safetensors`, its style LoRA under `style-lora-sd15.safetensors`.
- SD1.5 accelerator workflows (TCD, Hyper-SD, PCM, Flash): there is no embedded TCD/Hyper-SD/...
  LoRA, so the embedded LCM-LoRA stands in under each published file name; the family (and so the
  scheduler and sampler) still comes from that name, as with the real file.
- SDXL workflows (`lcm_lora_sdxl`, `accelerator_lightning`, `accelerator_dmd2`): there is no
  embedded SDXL model. They run on the tiny RANDOM SDXL stand-in and random LoRAs (as the tests
  do), so their thumbnails are noise-like pictures from random weights, not real SDXL output.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_workflows"
THUMBNAIL_SIZE = 256
JPEG_QUALITY = 85
SEED = 42


def scene_prompt(index: int) -> str:
    """A caption of the embedded model's world, different for neighbouring workflows."""
    from lcm_accel.embedded.world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, Scene, caption

    colours, positions, backgrounds = list(COLOURS), list(POSITIONS), list(BACKGROUNDS)
    return caption(
        Scene(
            SHAPES[index % len(SHAPES)],
            colours[(index + index // len(SHAPES)) % len(colours)],
            positions[index % len(positions)],
            backgrounds[index % len(backgrounds)],
        )
    )


def thumbnail_models_dir(root: Path) -> Path:
    """`root/models` + `root/input`: the embedded models folder, plus the accelerator LoRAs the
    workflows name (SD1.5: the embedded LCM-LoRA standing in; SDXL: random stand-ins)."""
    from lcm_accel.embedded import LCM_LORA_FILE, shipped_file
    from lcm_accel.embedded.models_dir import embedded_models_dir
    from lcm_accel.fixtures.cache import tiny_model
    from lcm_accel.fixtures.demo_models import LORAS
    from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya

    source = embedded_models_dir()
    shutil.copytree(source / "models", root / "models")
    shutil.copytree(source / "input", root / "input")
    loras = root / "models" / "loras"
    for name, (family, rank, _, lora_seed) in LORAS.items():
        if (loras / name).exists():
            continue
        if family == "sd15":
            shutil.copyfile(shipped_file(LCM_LORA_FILE), loras / name)
        else:  # as embedded.models_dir writes the SDXL LCM-LoRA stand-in
            factors = random_factors(lora_targets(tiny_model(family, 0).unet), rank, seed=lora_seed, scale=0.05)
            write_kohya(loras / name, factors, alpha=float(rank))
    return root


def save_thumbnail(png: Path, target: Path) -> int:
    """`png` enlarged to THUMBNAIL_SIZE (bicubic) as a JPEG at `target`; returns its size in bytes."""
    from PIL import Image

    with Image.open(png) as image:
        picture = image.convert("RGB").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BICUBIC)
    picture.save(target, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="workflow names (file stems) to render; default: all")
    args = parser.parse_args(argv)
    import torch

    from lcm_accel.embedded.demo import run_workflow

    torch.set_num_threads(1)  # 8x8 latents: more threads only add overhead
    workflows = sorted(EXAMPLES.glob("*.json"))
    unknown = set(args.names) - {p.stem for p in workflows}
    if unknown:
        parser.error(f"no example workflow named {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        models = thumbnail_models_dir(Path(scratch))
        for index, path in enumerate(workflows):  # the index keeps each workflow's prompt fixed
            if args.names and path.stem not in args.names:
                continue
            text = scene_prompt(index)
            png, seconds = run_workflow(path, models, Path(scratch) / "output" / path.stem, text, SEED, {})
            size = save_thumbnail(png, path.with_suffix(".jpg"))
            print(f"{path.with_suffix('.jpg').relative_to(ROOT)}: {size / 1024:.1f} kB, {seconds:.2f} s  ({text})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
