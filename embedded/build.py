"""`python -m lcm_accel.embedded.build`: train the embedded model and its adapters from scratch.

Stages (each with a progress bar; the files go to `embedded/files/` unless `--out`):
1. render the world (plain and outlined pictures, captions);
2. the VAE (KL-f8, 4 levels) on crops, its latent space normalised to SD1.5's scaling factor, then
   its decoder fine-tuned on whole pictures (the encoder, so the latent space, frozen);
3. the scorer (on renders and their VAE round trips);
4. the UNet (SD1.5 block structure) on the frozen text encoder's contexts; the base checkpoint
   is written as an LDM single file and every later stage reads it back through the checkpoint
   loader users' files go through;
5. the LCM-LoRA, distilled by `python -m lcm_accel train lcm-lora` on a folder of the world's
   images + captions;
6. the style LoRA (outlined shapes);
7. the scores (`evaluate.build_scores`) written to build_info.json beside the files.
Deterministic in `--seed` on one machine (not bit-identical across machines / thread counts).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from . import BASE_FILE, BUILD_INFO_FILE, FILES, LCM_LORA_FILE, SCORER_FILE, STYLE_LORA_FILE
from .evaluate import TEACHER_CFG, build_scores  # the teacher's guidance is what the LCM-LoRA distils
from .world import caption, render_batch, scenes

# The LCM-LoRA's distillation (measured on this model, 1200 steps of batch 16, see
# docs/embedded-model.md): lr 5e-4 drifted the base (LCM-LoRA 4 steps 85 % on 96 prompts where
# the base with the LCM sampler gets 100 %), 1e-4 and 2e-4 kept it (95 %, 100 %); on the paper's
# 50-point solver grid (k = 20) the consistency loss stayed flat in 1200 steps, on a 10-point grid
# (k = 100: ten links from t = 999 down to the boundary, each drawn five times as often) it falls
# and the pictures come closer to the teacher's.
LCM_LR = 2e-4
LCM_SOLVER_STEPS = 10


def _render(count: int, seed: int, style: str, progress: bool) -> torch.Tensor:
    from tqdm.auto import tqdm

    items = scenes(count, seed)
    chunks = [
        render_batch(items[i : i + 250], style)
        for i in tqdm(range(0, count, 250), desc=f"render {style}", disable=not progress)
    ]
    return torch.cat(chunks)


def _write_image_folder(folder: Path, images: torch.Tensor, prompts: list[str]) -> None:
    """`name.png` + `name.txt` pairs: the trainer's `--data` layout."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, (array, prompt) in enumerate(zip(pixels, prompts)):
        Image.fromarray(array).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(prompt + "\n", encoding="utf-8")


def build(
    out: Path,
    work: Path,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    reuse: bool = False,
    steps_scale: float = 1.0,
    stop_after: str | None = None,
    lcm_steps: int | None = None,
) -> dict:
    """Run every stage; returns the build info (settings, stage times, scores). `reuse`: keep the
    stages whose files are already in `out` (and the VAE stage's file in `work`: continue an
    interrupted build); `stop_after`: "vae", "scorer" or "unet" ends the build after that stage;
    `lcm_steps`: the LCM-LoRA distillation's steps instead of its scaled default (1200)."""
    from ..runtime.checkpoints import clear_cache, load_checkpoint
    from ..runtime.text_encoding import encode_prompt
    from .base_training import encode_latents, finetune_decoder, normalise_latents, text_contexts, train_unet, train_vae
    from .models import build_text_encoder, build_unet, build_vae, save_checkpoint
    from .scorer import save_scorer, train_scorer
    from .style_lora import train_style_lora

    scale = 0.05 if quick else 1.0
    steps = {
        k: max(2, int(v * scale * steps_scale))
        for k, v in {"vae": 4000, "vae_decoder": 1200, "unet": 7500, "lcm": 1200, "style": 800, "scorer": 800}.items()
    }
    if lcm_steps is not None:
        steps["lcm"] = lcm_steps
    counts = {
        "train": max(64, int(6000 * scale)),
        "outlined": max(64, int(3000 * scale)),
        "lcm_data": max(64, int(3000 * scale)),
    }
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    partial = work / "build_info.partial.json"  # the stage times of a build stopped early
    if reuse and partial.is_file():
        times.update(json.loads(partial.read_text(encoding="utf-8"))["stage_seconds"])
    clock = time.perf_counter()

    def stop(stage_name: str) -> dict:
        info = {"stopped_after": stage_name, "stage_seconds": times}
        partial.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return info

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = round(now - clock, 1)
        clock = now
        print(f"[build] {name}: {times[name]} s", flush=True)

    train_scenes = scenes(counts["train"], seed)
    plain = _render(counts["train"], seed, "plain", progress)
    outlined_scenes = scenes(counts["outlined"], seed + 1)
    outlined = _render(counts["outlined"], seed + 1, "outlined", progress)
    lap("render")

    base = out / BASE_FILE
    stage, stage_decoder = work / "stage-vae.safetensors", work / "stage-vae-decoder.safetensors"
    if reuse and base.is_file():  # continue a build: the base stage's output is there
        clear_cache()
        _, clip, vae_host = load_checkpoint(base)
    elif reuse and stage_decoder.is_file():  # continue a build stopped after the VAE stage
        clear_cache()
        _, clip, vae_host = load_checkpoint(stage_decoder)
    else:
        if not (reuse and stage.is_file()):
            vae = train_vae(build_vae(seed), torch.cat([plain, outlined]), steps["vae"], seed=seed, progress=progress)
            normalise_latents(vae, plain[:2000])
            lap("vae")
            save_checkpoint(build_unet(seed), vae, build_text_encoder(seed), stage)
        clear_cache()
        _, clip, vae_host = load_checkpoint(stage)
        # the decoder on whole pictures, the encoder (the latent space) as saved above
        finetune_decoder(vae_host.vae, torch.cat([plain, outlined]), steps["vae_decoder"], seed=seed, progress=progress)
        lap("vae-decoder")
        save_checkpoint(build_unet(seed), vae_host.vae, clip.text_encoders[0], stage_decoder)
        clear_cache()
        _, clip, vae_host = load_checkpoint(stage_decoder)
    if stop_after == "vae":
        return stop("vae")

    @torch.no_grad()
    def reconstruct(images: torch.Tensor) -> torch.Tensor:
        dist = vae_host.vae.encode(images * 2 - 1).latent_dist
        return ((vae_host.vae.decode(dist.mean).sample + 1) / 2).clamp(0, 1)

    if not (reuse and (out / SCORER_FILE).is_file()):
        n = min(len(outlined), len(plain), 2000)
        both = torch.cat([plain[:n], render_batch(train_scenes[:n], "outlined")])
        recon = torch.cat([reconstruct(both[i : i + 64]) for i in range(0, len(both), 64)])
        scorer = train_scorer(
            train_scenes[:n], both[:n], both[n:], recon[:n], recon[n:], steps["scorer"], seed=seed, progress=progress
        )
        save_scorer(scorer, out / SCORER_FILE)
        lap("scorer")
    if stop_after == "scorer":
        return stop("scorer")
    prompt_cache: dict[str, torch.Tensor] = {}

    def encode(prompt: str) -> torch.Tensor:
        if prompt not in prompt_cache:
            prompt_cache[prompt] = encode_prompt(clip, prompt)[0].float()
        return prompt_cache[prompt]

    scaling = vae_host.scaling_factor
    if not (reuse and base.is_file()):
        means, stds = encode_latents(vae_host.vae, plain, scaling)
        contexts = text_contexts(encode, [caption(s) for s in train_scenes])
        unet = train_unet(
            build_unet(seed), means, stds, contexts, encode(""), steps["unet"], seed=seed, progress=progress
        )
        save_checkpoint(unet, vae_host.vae, clip.text_encoders[0], base)
        clear_cache()
        lap("unet")
    if stop_after == "unet":
        return stop("unet")

    if not (reuse and (out / LCM_LORA_FILE).is_file()):
        _distil_lcm_lora(base, plain, train_scenes, counts["lcm_data"], steps["lcm"], out, work, seed, progress)
        lap("lcm-lora")

    if not (reuse and (out / STYLE_LORA_FILE).is_file()):
        model, _, _ = load_checkpoint(base)
        o_means, o_stds = encode_latents(vae_host.vae, outlined, scaling)
        o_contexts = text_contexts(encode, [caption(s) for s in outlined_scenes])
        train_style_lora(
            model.unet,
            o_means,
            o_stds,
            o_contexts,
            out / STYLE_LORA_FILE,
            steps=steps["style"],
            batch=16,
            seed=seed,
            progress=progress,
        )
        lap("style-lora")

    info = {
        "seed": seed,
        "quick": quick,
        "steps_scale": steps_scale,
        "steps": steps,
        "counts": counts,
        "teacher_cfg": TEACHER_CFG,
        "lcm_distillation": {"lr": LCM_LR, "num_ddim_steps": LCM_SOLVER_STEPS, "rank": 16, "batch": 16},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "stage_seconds": times,
    }
    info["scores"] = build_scores(out, progress=progress)
    lap("scores")
    info["total_seconds"] = round(sum(times.values()), 1)
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _distil_lcm_lora(
    base: Path,
    plain: torch.Tensor,
    train_scenes: list,
    count: int,
    steps: int,
    out: Path,
    work: Path,
    seed: int,
    progress: bool,
) -> None:
    """Stage 4: `python -m lcm_accel train lcm-lora` on a folder of the world's images + captions."""
    from ..cli import main

    data = work / "lcm-data"
    shutil.rmtree(data, ignore_errors=True)
    _write_image_folder(data, plain[:count], [caption(s) for s in train_scenes[:count]])
    shutil.rmtree(work / "lcm-train", ignore_errors=True)
    status = main(
        [
            "train",
            "lcm-lora",
            "--base",
            str(base),
            "--data",
            str(data),
            "--out",
            str(work / LCM_LORA_FILE),
            "--resolution",
            "64",
            "--rank",
            "16",
            "--steps",
            str(steps),
            "--batch",
            "16",
            "--lr",
            str(LCM_LR),
            "--w",
            str(TEACHER_CFG),
            "--num-ddim-steps",
            str(LCM_SOLVER_STEPS),
            "--device",
            "cpu",
            "--seed",
            str(seed),
            "--checkpoint-every",
            "0",
            "--work-dir",
            str(work / "lcm-train"),
        ]
        + ([] if progress else ["--no-progress"])
    )
    if status != 0:
        raise RuntimeError(f"`train lcm-lora` failed with exit status {status}")
    _halve_lora(work / LCM_LORA_FILE, out / LCM_LORA_FILE)


def _halve_lora(source: Path, target: Path) -> Path:
    """Copy a LoRA file with its factors in fp16 (the shipped size), keeping the metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: (v.half() if v.ndim > 0 else v) for k, v in tensors.items()}, str(target), metadata=metadata)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lcm_accel.embedded.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=str(FILES), help=f"where the files go (default: {FILES})")
    parser.add_argument("--work", default=None, help="scratch folder (default: OUT/../build-work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 %% of the steps and data: a smoke test, not a model")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a busy machine one thread is much faster)",
    )
    parser.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply every stage's training steps (more steps: better pictures, longer build)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep the files already in OUT (continue a build)")
    parser.add_argument(
        "--lcm-steps",
        type=int,
        default=None,
        help="the LCM-LoRA distillation's steps (default 1200 x --steps-scale); with --reuse and the LCM-LoRA "
        "file removed from OUT, only the LCM-LoRA is distilled again, then everything is scored",
    )
    parser.add_argument(
        "--stop-after",
        choices=("vae", "scorer", "unet"),
        default=None,
        help="end after this stage (continue later with --reuse)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "build-work"
    start = time.perf_counter()
    info = build(
        out,
        work,
        args.seed,
        args.quick,
        not args.no_progress,
        args.reuse,
        args.steps_scale,
        args.stop_after,
        args.lcm_steps,
    )
    print(f"built the embedded model in {time.perf_counter() - start:.0f} s -> {out}")
    print(json.dumps(info.get("scores", {}), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
