"""GPU end to end, side by side in one run: diffusers' eager pipeline, our eager path and our fast
path (captured UNet steps / text encode / VAE decode), and LoRA apply / re-weight / restore
against diffusers' fuse_lora / unfuse_lora, on the same random full-size SD1.5 weights.

    python benchmarks/gpu_e2e.py                         # CUDA, 512x512 fp16, 5 timed runs each
    python benchmarks/gpu_e2e.py --device cpu --quick    # smoke run: tiny SD1.5, 64x64, fp32

What is timed (medians of --repeats runs after --warmup runs, torch.cuda.synchronize() around each):
prompt -> decoded image (text encode, sampling, VAE decode, image on the host), at 1 and 4 LCM steps,
cfg 1, and the 25-step cfg-7.5 Euler baseline without LCM-LoRA. The UNet carries an LCM-LoRA-shaped
rank-64 adapter (weight 1.0) plus a rank-16 style adapter (0.8) on the 278 LoRA targets of SD1.5:
our host patches them in place; diffusers loads them with PEFT and fuses them (fuse_lora).
diffusers' LCM route uses LCMScheduler, its baseline EulerDiscreteScheduler. Our fast path covers
LCM / TCD sampling; in the baseline it captures text encode and VAE decode, its Euler loop is eager.
LoRA: time of apply, re-weight (1.0/0.8 -> 0.9/0.5) and restore; elements not restored bitwise;
extra device memory (peak during the call, above what was allocated before); and whether a graph
captured before the re-weight is replayed after it without a new capture.
Without CUDA (and without --device cpu) it exits with status 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PROMPT, NEGATIVE, SEED = "a lighthouse on a cliff at dawn, detailed", "blurry, low quality", 42
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SAMPLER_MODULES = ("downsamplers.0.conv", "upsamplers.0.conv")


# --------------------------------------------------------------------------- setup
def lora_target_shapes(unet: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The layers an SD1.5 LCM-LoRA trains (278 on SD1.5): attention, feed-forward, proj_in/out, resnet
    convs, shortcuts and time projections, and the down/up-sampler convs."""
    from lcm_accel.fixtures.tiny_loras import lora_targets

    targets = lora_targets(unet, convs=True)
    for name, p in unet.named_parameters():
        if name.endswith(".weight") and name[: -len(".weight")].endswith(SAMPLER_MODULES):
            targets[name[: -len(".weight")]] = tuple(p.shape)
    return targets


def write_adapters(unet: torch.nn.Module, folder: Path) -> tuple[Path, Path, int]:
    """An LCM-LoRA-shaped kohya file (rank 64, alpha 8) and a rank-16 PEFT-layout style file."""
    from lcm_accel.fixtures.tiny_loras import random_factors, write_kohya, write_peft

    targets = lora_target_shapes(unet)
    lcm = write_kohya(
        folder / "lcm-lora-shaped.safetensors",
        random_factors(targets, rank=64, seed=1, scale=0.01, dtype=torch.float16),
        alpha=8.0,
    )
    style = write_peft(
        folder / "style-rank16.safetensors", random_factors(targets, rank=16, seed=2, scale=0.01, dtype=torch.float16)
    )
    return lcm, style, len(targets)


def build_models(root: Path, quick: bool, device: torch.device, dtype: torch.dtype):
    """Our MODEL / CLIP / VAE loaded through the standalone host's checkpoint loader from a written
    single-file checkpoint (full-size SD1.5 with random weights, or the tiny fixture with --quick),
    placed by the loader on `device` with every part in `dtype`."""
    from lcm_accel.runtime.checkpoints import load_checkpoint
    from lcm_accel.runtime.devices import Placement

    checkpoint = root / "models" / "checkpoints" / "sd15.safetensors"
    tokenizers = root / "models" / "tokenizers" / "clip"
    if quick:
        from lcm_accel.fixtures import save_ldm_checkpoint, tiny_model, write_clip_tokenizer

        save_ldm_checkpoint(tiny_model("sd15"), checkpoint)
        write_clip_tokenizer(tokenizers)
    else:
        from bench_lcm_workflow import build_full_sd15_checkpoint

        build_full_sd15_checkpoint(checkpoint, tokenizers)
    return load_checkpoint(checkpoint, Placement(device, dtype, dtype, dtype))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs, the device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measured(fn, device: torch.device):
    """(result, seconds, extra device MiB at peak) of one call."""
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return out, seconds, peak


# --------------------------------------------------------------------------- our host
def our_image(model, clip, vae, steps: int, cfg: float, size: int, lcm: bool) -> torch.Tensor:
    """Prompt -> IMAGE (B, H, W, 3) on the host through the standalone host's node functions."""
    from lcm_accel.hosts.standalone.sampling_pipeline import common_ksampler, lcm_ksample
    from lcm_accel.runtime.text_encoding import encode_prompt
    from lcm_accel.runtime.vae_codec import decode

    def conditioning(text: str) -> list:
        cond, pooled = encode_prompt(clip, text)
        return [[cond, {"pooled_output": pooled}]]

    positive = conditioning(PROMPT)
    negative = positive if cfg == 1.0 else conditioning(NEGATIVE)
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    if lcm:
        samples = lcm_ksample(model, SEED, steps, cfg, positive, negative, latent)["samples"]
    else:
        samples = common_ksampler(model, SEED, steps, cfg, "euler", "normal", positive, negative, latent)[0]["samples"]
    return decode(vae, samples)


def fast_values(model, clip, vae):
    from lcm_accel.runtime.fast_mode import FastModeSettings, with_fast_mode

    settings = FastModeSettings(True, "cuda_graph")
    return tuple(with_fast_mode(v, settings) for v in (model, clip, vae))


# --------------------------------------------------------------------------- diffusers
def diffusers_pipeline(model, clip, vae):
    import warnings

    from diffusers import StableDiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline(
            vae=vae.vae,
            text_encoder=clip.text_encoders[0],
            tokenizer=clip.tokenizer,
            unet=model.unet,
            scheduler=lcm_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )


def diffusers_image(pipe, steps: int, cfg: float, size: int) -> torch.Tensor:
    negative = None if cfg == 1.0 else NEGATIVE
    out = pipe(
        PROMPT,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=cfg,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    )
    return torch.from_numpy(out.images)


def diffusers_load_adapters(unet, lcm_path: Path, style_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    for name, path in (("lcm", lcm_path), ("style", style_path)):
        state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet, adapter_name=name)


def base_weights(unet) -> dict[str, torch.Tensor]:
    """name -> the weight's bits on the host (names without PEFT's `base_layer.`)."""
    return {
        name.replace(".base_layer", ""): p.detach().cpu().clone()
        for name, p in unet.named_parameters()
        if "lora_" not in name
    }


def not_restored(unet, originals: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(elements whose bits differ from `originals`, elements compared)."""
    changed = total = 0
    for name, value in base_weights(unet).items():
        if name in originals:
            changed += int(
                (
                    value.view(torch.int16 if value.element_size() == 2 else torch.int32)
                    != originals[name].view(torch.int16 if value.element_size() == 2 else torch.int32)
                ).sum()
            )
            total += value.numel()
    return changed, total


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: a smoke run)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5; 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before each row (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny SD1.5 fixture, small image, 2-step baseline")
    parser.add_argument("--skip-diffusers", action="store_true", help="only our eager and fast paths")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: benchmarks/gpu_e2e.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run it on a CUDA machine, or pass --device cpu --quick for a smoke run",
            file=sys.stderr,
        )
        return 2
    if device.type != "cuda" and not args.quick:
        print("error: full-size runs are for CUDA; pass --quick with --device cpu", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    size = args.size or (64 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 5)
    warmup = min(args.warmup, 1) if args.quick else args.warmup
    baseline_steps = 2 if args.quick else 25

    from lcm_accel.runtime import fast_mode
    from lcm_accel.runtime.graph_cache import graph_cache
    from lcm_accel.runtime.lora_state import activate_patches, add_loras, load_lora_file
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    with tempfile.TemporaryDirectory(prefix="lcm_gpu_e2e_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model, clip, vae = build_models(root, args.quick, device, dtype)
        originals = base_weights(model.unet)  # the base weights' bits, before any LoRA
        lcm_path, style_path, n_targets = write_adapters(model.unet, root / "models" / "loras")
        with use_model_paths(ModelPaths(root / "models")):
            lcm_file, style_file = load_lora_file(lcm_path.name), load_lora_file(style_path.name)
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(
            f"{gpu}; torch {torch.__version__}; {dtype}; {size}x{size}; UNet "
            f"{sum(p.numel() for p in model.unet.parameters()) / 1e6:.0f}M params; {n_targets} LoRA targets; "
            f"setup {time.perf_counter() - t0:.0f} s; medians of {repeats} runs after {warmup} warm-up runs"
        )

        base = model
        with_lora = add_loras(base, [(lcm_file, 1.0), (style_file, 0.8)])
        fast_lora, fast_clip, fast_vae = fast_values(with_lora, clip, vae)
        fast_base = fast_values(base, clip, vae)[0]
        rows: dict[str, dict[str, float]] = {}
        images: dict[str, dict[str, torch.Tensor]] = {}
        configs = [
            ("LCM 1 step, cfg 1", 1, 1.0, True),
            ("LCM 4 steps, cfg 1", 4, 1.0, True),
            (f"Euler {baseline_steps} steps, cfg 7.5", baseline_steps, 7.5, False),
        ]

        # ours (LoRA applied in place once by the first LCM run; restored for the baseline)
        for label, steps, cfg, lcm in configs:
            eager_model, fast_model = (with_lora, fast_lora) if lcm else (base, fast_base)
            rows[label], images[label] = {}, {}
            for name, values in (
                ("ours eager", (eager_model, clip, vae)),
                ("ours fast", (fast_model, fast_clip, fast_vae)),
            ):
                run = lambda values=values: our_image(*values, steps, cfg, size, lcm)  # noqa: E731
                rows[label][name] = median_seconds(run, device, repeats, warmup)
                images[label][name] = run()
        unet_cache = graph_cache(model.unet, fast_mode.BACKENDS["cuda_graph"])

        # LoRA on our host: re-weight (a graph captured before it must replay after it), restore, apply
        lora: dict[str, dict] = {"ours": {}, "diffusers": {}}
        activate_patches(with_lora)
        ptrs = {n: p.data_ptr() for n, p in model.unet.named_parameters()}
        reweighted = add_loras(base, [(lcm_file, 0.9), (style_file, 0.5)])
        _, s, m = measured(lambda: activate_patches(reweighted), device)
        lora["ours"]["reweight"] = (s, m)
        captures = unet_cache.captures
        fast_re = fast_values(reweighted, clip, vae)[0]
        after = our_image(fast_re, fast_clip, fast_vae, 4, 1.0, size, True)
        eager_after = our_image(reweighted, clip, vae, 4, 1.0, size, True)
        recaptured = unet_cache.captures - captures
        _, s, m = measured(lambda: activate_patches(base), device)
        lora["ours"]["restore"] = (s, m)
        ours_changed, _ = not_restored(model.unet, originals)
        _, s, m = measured(lambda: activate_patches(with_lora), device)
        lora["ours"]["apply"] = (s, m)
        activate_patches(base)
        same_storage = all(p.data_ptr() == ptrs[n] for n, p in model.unet.named_parameters())

        if not args.skip_diffusers:
            pipe = diffusers_pipeline(base, clip, vae)
            diffusers_load_adapters(model.unet, lcm_path, style_path)
            model.unet.set_adapters(["lcm", "style"], weights=[1.0, 0.8])
            _, s, m = measured(lambda: model.unet.fuse_lora(adapter_names=["lcm", "style"]), device)
            lora["diffusers"]["apply"] = (s, m)
            for label, steps, cfg, lcm in configs:
                if not lcm:
                    continue
                pipe.scheduler = lcm_scheduler()
                run = lambda steps=steps, cfg=cfg: diffusers_image(pipe, steps, cfg, size)  # noqa: E731
                rows[label]["diffusers eager"] = median_seconds(run, device, repeats, warmup)
                images[label]["diffusers eager"] = run()

            def reweight():
                model.unet.unfuse_lora()
                model.unet.set_adapters(["lcm", "style"], weights=[0.9, 0.5])
                model.unet.fuse_lora(adapter_names=["lcm", "style"])

            _, s, m = measured(reweight, device)
            lora["diffusers"]["reweight"] = (s, m)
            _, s, m = measured(model.unet.unfuse_lora, device)
            lora["diffusers"]["restore"] = (s, m)
            diff_changed, diff_total = not_restored(model.unet, originals)
            model.unet.unload_lora()
            label = f"Euler {baseline_steps} steps, cfg 7.5"
            pipe.scheduler = euler_scheduler()
            run = lambda: diffusers_image(pipe, baseline_steps, 7.5, size)  # noqa: E731
            rows[label]["diffusers eager"] = median_seconds(run, device, repeats, warmup)
            images[label]["diffusers eager"] = run()

    _print_rows(rows, images)
    print(f"\nLoRA ({n_targets} targets; ours in place, diffusers PEFT fuse_lora / unfuse_lora):")
    print(f"{'phase':<10}{'ours ms':>10}{'diffusers ms':>14}{'ratio':>8}{'ours +MiB':>11}{'diffusers +MiB':>16}")
    for phase in ("apply", "reweight", "restore"):
        ours, theirs = lora["ours"][phase], lora["diffusers"].get(phase, (float("nan"), float("nan")))
        print(
            f"{phase:<10}{1e3 * ours[0]:>10.1f}{1e3 * theirs[0]:>14.1f}{theirs[0] / ours[0]:>7.1f}x"
            f"{ours[1]:>11.0f}{theirs[1]:>16.0f}"
        )
    print(
        f"ours: {ours_changed} elements not restored bitwise after restore; same data_ptr for every parameter: "
        f"{same_storage}; graph captures during re-weight + next image: {recaptured}; fast vs eager after the "
        f"re-weight: max |diff| {float((after - eager_after).abs().max()):.2e}"
    )
    if not args.skip_diffusers:
        print(
            f"diffusers: {diff_changed} of {diff_total} elements ({100 * diff_changed / diff_total:.2f}%) not "
            f"restored bitwise after unfuse_lora"
        )
    return 0


def _print_rows(rows: dict, images: dict) -> None:
    names = ["diffusers eager", "ours eager", "ours fast"]
    print(
        f"\n{'prompt -> image':<26}"
        + "".join(f"{n + ' ms':>18}" for n in names)
        + f"{'diffusers/fast':>16}{'eager/fast':>12}{'max|fast-eager|':>17}{'max|fast-diffusers|':>21}"
    )
    for label, times in rows.items():
        ms = [1e3 * times.get(n, float("nan")) for n in names]
        shots = images[label]
        fast_eager = float((shots["ours fast"] - shots["ours eager"]).abs().max())
        fast_diff = (
            float((shots["ours fast"] - shots["diffusers eager"]).abs().max())
            if "diffusers eager" in shots and not label.startswith("Euler")
            else float("nan")
        )
        print(
            f"{label:<26}"
            + "".join(f"{v:>18.1f}" for v in ms)
            + f"{ms[0] / ms[2]:>15.2f}x{ms[1] / ms[2]:>11.2f}x{fast_eager:>17.2e}{fast_diff:>21.2e}"
        )


if __name__ == "__main__":
    sys.exit(main())
