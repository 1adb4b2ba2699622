"""Benchmark: the LCM-LoRA papers' claims measured on the embedded model (CPU, a few minutes).

    python benchmarks/bench_embedded_claims.py [--count 48] [--seeds 0 1] [--threads 1] [--quick] [--files DIR]

The embedded model (`embedded/`, trained by `python -m lcm_accel.embedded.build`) draws coloured
shapes from prompts, so a picture can be right or wrong. For `--count` balanced prompts x `--seeds`
(each seed one batch), every method below samples through the standalone host's own code paths
(checkpoint loader, LoRA mixer patch, KSampler "ddim" + "normal" with CFG, LCM sampler, DeepCache
node settings, LCMQuantizeUNet), and the shipped scorer reads each picture back:
- prompt accuracy: shape and colour as the prompt asks; position accuracy beside it;
- distance to the teacher: RMS pixel distance (images in [0, 1]) to the teacher's picture of the
  same prompt and seed (teacher = the base at 25 DDIM steps with CFG 4, the guidance the LCM-LoRA
  distils);
- time per picture (batch of --count, so amortised; 8x8 latents make the VAE and the Python
  overhead a large share: compare UNet calls for the arithmetic) and UNet calls per picture;
- the base UNet with the LCM sampler and no LoRA, beside the LCM-LoRA: what the scheduler alone
  does (in this world a prompt nearly fixes the picture, so the base's own x0 predictions already
  draw it: see docs/embedded-model.md);
- style rate: share of pictures the scorer reads as "outlined" (the style LoRA's style); style
  retention = style rate / style rate of the style LoRA (0.8) on the teacher at 25 steps.
Claims checked: LCM-LoRA at 4 steps within 5 points of the teacher's accuracy and clearly above the
base at 4 steps; the style LoRA kept next to the LCM-LoRA at the paper's weights (0.8, 1.0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT.parent))

from lcm_accel.embedded.evaluate import (  # noqa: E402
    PAPER_WEIGHTS,
    TEACHER_STEPS,
    EmbeddedPipeline,
    eval_scenes,
    measure,
)
from lcm_accel.quantize.formats import FORMATS  # noqa: E402


def methods(step_list: list[int]) -> list[tuple[str, dict]]:
    """(row label, `EmbeddedPipeline.sample` arguments), the teacher first."""
    rows = [(f"teacher DDIM {TEACHER_STEPS} + CFG", dict(steps=TEACHER_STEPS))]
    rows += [(f"base DDIM {k} + CFG", dict(steps=k)) for k in step_list]
    rows += [(f"LCM-LoRA {k}", dict(steps=k, lcm=1.0)) for k in step_list]
    # the LCM sampler alone (no LoRA): how much of the few-step result is the scheduler's
    rows += [(f"base + LCM sampler {k}, no LoRA", dict(steps=k, lcm_sampler=True)) for k in step_list]
    rows += [
        ("LCM-LoRA 8 + DeepCache i2", dict(steps=8, lcm=1.0, deepcache=2)),
        (f"teacher {TEACHER_STEPS} + DeepCache i3", dict(steps=TEACHER_STEPS, deepcache=3)),
    ]
    rows += [(f"LCM-LoRA 4 + {fmt}", dict(steps=4, lcm=1.0, quantize=fmt)) for fmt in FORMATS]
    style = PAPER_WEIGHTS["style"]
    rows += [
        (f"style {style} on teacher {TEACHER_STEPS}", dict(steps=TEACHER_STEPS, style=style)),
        (f"style {style} + LCM {PAPER_WEIGHTS['lcm']} 4", dict(steps=4, lcm=PAPER_WEIGHTS["lcm"], style=style)),
        ("style + LCM 8 + DeepCache i2", dict(steps=8, lcm=1.0, style=style, deepcache=2)),
    ]
    rows += [(f"style + LCM 4 + {fmt}", dict(steps=4, lcm=1.0, style=style, quantize=fmt)) for fmt in FORMATS]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48, help="prompts per seed (one batch)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--quick", action="store_true", help="8 prompts, one seed: a smoke run")
    parser.add_argument(
        "--files",
        default=None,
        help="a folder with the embedded files (default: the shipped ones), e.g. a build's --out with an LCM-LoRA "
        "distilled otherwise",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.count, args.seeds = 8, [0]
    from tqdm.auto import tqdm

    pipeline = EmbeddedPipeline(args.files) if args.files else EmbeddedPipeline()
    scenes = eval_scenes(args.count)
    rows = methods(args.steps)
    teacher: dict[int, torch.Tensor] = {}
    results = []
    for label, kwargs in tqdm(rows, desc="methods"):
        found, seconds, calls = [], 0.0, 0
        for seed in args.seeds:
            samples = pipeline.sample(scenes, seed, **kwargs)
            if label == rows[0][0]:  # the teacher: the reference of every distance
                teacher[seed] = samples.images
            found.append(measure(pipeline, scenes, samples.images, teacher.get(seed)))
            seconds += samples.seconds_per_image / len(args.seeds)
            calls = samples.unet_calls
        mean = lambda key: sum(getattr(m, key) for m in found) / len(found)  # noqa: E731
        results.append((label, calls, seconds, mean("accuracy"), mean("position"), mean("distance"), mean("style")))
    style_reference = next(r[6] for r in results if r[0].startswith("style") and "teacher" in r[0])
    print(
        f"\n{args.count} prompts x {len(args.seeds)} seeds, torch threads {args.threads}, CPU; "
        "distance: RMS pixel distance to the teacher's picture (same prompt and seed)"
    )
    header = f"| {'method':34} | UNet calls | s / image | prompt acc | position acc | dist. to teacher | style rate | style retained |"
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for label, calls, seconds, acc, pos, dist, style in results:
        retained = f"{style / style_reference:.2f}" if label.startswith("style") and style_reference else ""
        print(
            f"| {label:34} | {calls:10d} | {seconds:9.4f} | {acc:10.1%} | {pos:12.1%} | {dist:16.3f} | "
            f"{style:10.1%} | {retained:>14} |"
        )
    by_label = {r[0]: r for r in results}
    teacher_acc = results[0][3]
    lcm4, base4 = by_label.get("LCM-LoRA 4"), by_label.get("base DDIM 4 + CFG")
    if lcm4 and base4:
        print(
            f"\nLCM-LoRA 4 steps: {lcm4[3]:.1%} vs teacher {teacher_acc:.1%} ({(lcm4[3] - teacher_acc) * 100:+.1f} points; "
            f"target: at most 5 below) and base DDIM 4 + CFG {base4[3]:.1%} ({(lcm4[3] - base4[3]) * 100:+.1f} points)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
