"""Benchmark: the DeepCache node on a full-size SD1.5 UNet (speed) and on the tiny models (image drift).

    python benchmarks/bench_deepcache.py [--latent 32] [--branches 0] [--intervals 2 3 5] [--quick]

Three parts, measured side by side in one run (ratios matter, not absolute seconds; other
processes on the machine make the timings noisy, so per-call times are the fastest of --repeats,
full and partial calls alternating so that both meet the same load):

1. Per UNet call: a full-size SD1.5 UNet (diffusers `UNet2DConditionModel(cross_attention_dim=768,
   attention_head_dim=8)`, random weights, fp32, CPU, batch 1, 77-token context) called fully and
   partially (through `feature_cache.DeepCacheUNet` with flags [True, False, True, False, ...]) at each branch of
   --branches; their ratio beside the share of the UNet's multiply-adds a partial call skips
   (`feature_cache.skipped_fraction`), whose bound on the ratio is 1 / (1 - skipped).
2. Whole sampling runs through the real nodes on a `ModelHost` with that UNet: a 25-step euler
   KSampler run at cfg 7 (cond and uncond: 2 UNet calls per step) and 4- and 8-step LCMKSampler runs
   at cfg 1, each without DeepCache and with the DeepCache node at every --intervals (first branch
   of --branches). Conditioning is random (1, 77, 768) tensors in ComfyUI's format. Beside the
   measured speedup: the one expected from part 1, (n_calls * t_full) / (n_full * t_full +
   n_partial * t_partial), with n_full / n_partial counted by hooks during the run.
3. Image drift on the tiny SD1.5 checkpoint (`fixtures.shared_models_root()`, loaded by the
   standalone checkpoint loader, prompts through CLIPTextEncode, images through its VAE): PSNR in dB
   (10 log10(1 / MSE) on images in [0, 1]) of each cached run's decoded image against the uncached
   one, same runs and intervals, at --psnr-branches. The tiny UNet has the SD1.5 layout's 4 levels of
   3 up layers (branches 0-11) at small widths, so every SD1.5 branch exists on it too.

The default latent is 32 (256 px), not 64 (512 px): on this 2-core machine one full SD1.5 UNet call
took about 21 s at latent 64 and 3-9 s at latent 32 (depending on the other processes' load), and
part 2 makes 130 full UNet calls at the default grid (well over 25 min at latent 64); the default run
took 16-22 min. `--latent 64` measures 512 px images. Part 2 prints each run's mean full-call time and a
speedup normalized by it, since a change of load between a run and its baseline skews the ratio.
`--quick` is a smoke run (latent 16, 4 euler steps, 2- and 4-step LCM, interval 2, one repeat).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass

import torch

SEED = 0
CFG_EULER = 7.0


@dataclass(frozen=True)
class RunKind:
    """One sampling run of the grid: a name and the steps; cfg follows from the sampler."""

    name: str
    sampler: str  # "euler" (KSampler, cfg 7) or "lcm" (LCMKSampler, cfg 1)
    steps: int

    @property
    def cfg(self) -> float:
        return CFG_EULER if self.sampler == "euler" else 1.0

    @property
    def calls_per_step(self) -> int:
        return 1 if math.isclose(self.cfg, 1.0) else 2


def run_kinds(euler_steps: int, lcm_steps: list[int]) -> list[RunKind]:
    kinds = [RunKind(f"euler {euler_steps} cfg{CFG_EULER:g}", "euler", euler_steps)]
    return kinds + [RunKind(f"LCM {steps} cfg1", "lcm", steps) for steps in lcm_steps]


# --- the nodes -------------------------------------------------------------------------------------------
def sample(model, kind: RunKind, positive: list, negative: list, latent: dict) -> torch.Tensor:
    """The run's final latent through the real nodes (KSampler or LCMKSampler)."""
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
    from lcm_accel.nodes import NODE_CLASS_MAPPINGS as PACK

    if kind.sampler == "euler":
        out = CORE["KSampler"]().sample(
            model, SEED, kind.steps, kind.cfg, "euler", "normal", positive, negative, latent, 1.0
        )
    else:
        out = PACK["LCMKSampler"]().sample(model, SEED, kind.steps, kind.cfg, positive, negative, latent)
    return out[0]["samples"]


def with_deepcache(model, interval: int, branch: int):
    """The MODEL with the DeepCache node applied (uniform schedule over the whole run)."""
    from lcm_accel.nodes import NODE_CLASS_MAPPINGS as PACK

    return PACK["DeepCache"]().apply(model, interval, branch, 0.0, 1.0, "uniform")[0]


def empty_latent(latent_size: int) -> dict:
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE

    return CORE["EmptyLatentImage"]().generate(latent_size * 8, latent_size * 8, 1)[0]


class CallTimer:
    """Counts and times UNet calls, full and partial apart. A call is full when the first resnet of
    the middle block runs in it: every branch's partial call skips the middle block."""

    def __init__(self, unet: torch.nn.Module):
        self.reset()
        self._start, self._full = 0.0, False
        self._handles = [
            unet.register_forward_pre_hook(self._begin),
            unet.register_forward_hook(self._end),
            unet.mid_block.resnets[0].register_forward_pre_hook(self._mark_full),
        ]

    def _begin(self, module, args) -> None:
        self._start, self._full = time.perf_counter(), False

    def _mark_full(self, module, args) -> None:
        self._full = True

    def _end(self, module, args, output) -> None:
        kind = "full" if self._full else "partial"
        self.calls[kind] += 1
        self.seconds[kind] += time.perf_counter() - self._start

    def reset(self) -> None:
        self.calls = {"full": 0, "partial": 0}
        self.seconds = {"full": 0.0, "partial": 0.0}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


# --- part 1: per call -----------------------------------------------------------------------------------
def full_size_unet(latent_size: int) -> torch.nn.Module:
    """The SD1.5 UNet layout with random weights (the arithmetic is the real arithmetic)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    return UNet2DConditionModel(sample_size=latent_size, cross_attention_dim=768, attention_head_dim=8).eval()


@torch.no_grad()
def time_calls(unet: torch.nn.Module, latent_size: int, branches: list[int], repeats: int) -> tuple[float, dict]:
    """(t_full, {branch: t_partial}): fastest of `repeats` calls each, batch 1, random inputs.

    Full and partial calls alternate (flags [True, False, True, False, ...]) so that both see the
    same changes of the machine's load; each full call refreshes the features the next one reuses.
    """
    from lcm_accel.feature_cache import DeepCacheUNet

    generator = torch.Generator().manual_seed(SEED)
    sample_in = torch.randn(1, 4, latent_size, latent_size, generator=generator)
    context = torch.randn(1, 77, 768, generator=generator)
    timestep = torch.tensor(500.0)

    def timed_call() -> float:
        start = time.perf_counter()
        unet(sample_in, timestep, encoder_hidden_states=context)
        return time.perf_counter() - start

    timed_call()  # warm-up (allocator, oneDNN kernels)
    full, partial = [], {}
    for branch in branches:
        with DeepCacheUNet(unet, branch, [True, False] * repeats) as cached:
            times = [timed_call() for _ in range(2 * repeats)]
            if cached.stats != {"full": repeats, "partial": repeats, "forced_full": 0}:
                raise RuntimeError(
                    f"branch {branch}: expected {repeats} full and {repeats} partial calls, got {cached.stats}"
                )
        full += times[0::2]
        partial[branch] = min(times[1::2])
    return min(full), partial


# --- part 2: whole runs ---------------------------------------------------------------------------------
@dataclass
class TimedRun:
    kind: RunKind
    interval: int | None  # None: no DeepCache
    wall: float
    full: int
    partial: int
    full_seconds: float  # mean time of one full UNet call in this run (shows the machine's load)


@torch.no_grad()
def time_runs(
    unet: torch.nn.Module, latent_size: int, kinds: list[RunKind], intervals: list[int], branch: int
) -> list[TimedRun]:
    """One timed run per (kind, interval), uncached first, through the nodes on a ModelHost."""
    from lcm_accel.runtime.model_types import ModelHost

    model = ModelHost(unet=unet, family="sd15")
    generator = torch.Generator().manual_seed(SEED + 1)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]
    timer = CallTimer(unet)
    results = []
    try:
        for kind in kinds:
            for interval in [None] + intervals:
                run_model = model if interval is None else with_deepcache(model, interval, branch)
                timer.reset()
                start = time.perf_counter()
                sample(run_model, kind, positive, negative, empty_latent(latent_size))
                wall = time.perf_counter() - start
                full, partial = timer.calls["full"], timer.calls["partial"]
                results.append(TimedRun(kind, interval, wall, full, partial, timer.seconds["full"] / max(full, 1)))
                label = "none" if interval is None else interval
                print(
                    f"  {kind.name:16s} interval {label!s:4s} {wall:8.1f} s  ({full} full / {partial} partial "
                    f"calls, {results[-1].full_seconds:.2f} s per full call)",
                    flush=True,
                )
    finally:
        timer.close()
    return results


# --- part 3: PSNR on the tiny models --------------------------------------------------------------------
def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]; inf when they are identical."""
    mse = float(((image.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def tiny_psnr(kinds: list[RunKind], intervals: list[int], branches: list[int], image_size: int) -> dict:
    """{(kind name, branch, interval): PSNR of the cached run's image vs the uncached one}."""
    from lcm_accel.fixtures import shared_models_root
    from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
    from lcm_accel.runtime.checkpoints import load_checkpoint

    model, clip, vae = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors")
    encode, decode = CORE["CLIPTextEncode"]().encode, CORE["VAEDecode"]().decode
    positive, negative = encode(clip, "a photo of a cat")[0], encode(clip, "blurry")[0]
    latent = CORE["EmptyLatentImage"]().generate(image_size, image_size, 1)[0]

    def image(run_model, kind):
        return decode(vae, {"samples": sample(run_model, kind, positive, negative, latent)})[0]

    table = {}
    for kind in kinds:
        reference = image(model, kind)
        for branch in branches:
            for interval in intervals:
                table[(kind.name, branch, interval)] = psnr(
                    image(with_deepcache(model, interval, branch), kind), reference
                )
    return table


# --- printing -------------------------------------------------------------------------------------------
def print_part1(latent: int, t_full: float, partial: dict, skipped: dict) -> None:
    print(f"\n## 1. UNet time per call, full-size SD1.5, latent {latent}x{latent} ({latent * 8} px), batch 1")
    print(f"full call: {t_full:.3f} s")
    print("branch  partial s  full/partial  skipped MACs  MAC bound 1/(1-skipped)")
    for branch, t_partial in partial.items():
        print(
            f"{branch:6d}  {t_partial:9.3f}  {t_full / t_partial:12.2f}x  {skipped[branch]:12.4f}  "
            f"{1 / (1 - skipped[branch]):10.2f}x"
        )


def print_part2(runs: list[TimedRun], t_full: float, t_partial: float, branch: int) -> None:
    print(f"\n## 2. Whole runs through the nodes, DeepCache branch {branch} (expected from part 1's per-call times)")
    print(
        "run               interval  full/partial calls   wall s  s/full call  measured speedup  load-normalized  expected speedup"
    )
    base = {}
    for run in runs:
        partial = run.partial
        if run.interval is None:
            base[run.kind.name] = run
            label, measured, normalized, expected = "none", 1.0, 1.0, 1.0
        else:
            ref = base[run.kind.name]
            label = str(run.interval)
            measured = ref.wall / run.wall
            normalized = measured * run.full_seconds / ref.full_seconds
            expected = (ref.full + ref.partial) * t_full / (run.full * t_full + partial * t_partial)
        print(
            f"{run.kind.name:17s} {label:>8s}  {run.full:5d} / {partial:<5d}      {run.wall:8.1f}  "
            f"{run.full_seconds:11.2f}  {measured:15.2f}x  {normalized:14.2f}x  {expected:15.2f}x"
        )
    print(
        "(s/full call: mean of the run's full UNet calls; where it differs between a run and its baseline the "
        "machine's load changed;\n load-normalized = measured x (s/full call of the run / of its baseline), "
        "assuming partial calls slowed by the same factor)"
    )


def print_part3(table: dict, kinds: list[RunKind], intervals: list[int], branches: list[int], size: int) -> None:
    print(f"\n## 3. PSNR (dB) of the cached vs the uncached image, tiny SD1.5 checkpoint, {size}x{size} px")
    header = "run               " + "".join(f"  b{b} i{i:<3d}" for b in branches for i in intervals)
    print(header)
    for kind in kinds:
        cells = "".join(f"  {table[(kind.name, b, i)]:7.2f}" for b in branches for i in intervals)
        print(f"{kind.name:17s} {cells}")
    print("(bN iM = branch N, interval M; inf = identical)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--latent",
        type=int,
        default=32,
        help="latent height and width of the full-size runs (default 32 = 256 px; 64 = 512 px, ~2x slower)",
    )
    parser.add_argument(
        "--branches",
        type=int,
        nargs="+",
        default=[0],
        help="DeepCache branches timed in part 1; part 2 uses the first (default 0)",
    )
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5], help="cache intervals (default 2 3 5)")
    parser.add_argument("--euler-steps", type=int, default=25, help="steps of the euler cfg-7 run (default 25)")
    parser.add_argument("--lcm-steps", type=int, nargs="+", default=[4, 8], help="steps of the LCM runs (default 4 8)")
    parser.add_argument("--repeats", type=int, default=5, help="per-call timings: the fastest of N (default 5)")
    parser.add_argument(
        "--psnr-branches",
        type=int,
        nargs="+",
        default=[0, 3, 6],
        help="branches of the tiny-model PSNR table (default 0 3 6)",
    )
    parser.add_argument("--tiny-size", type=int, default=128, help="image size of the tiny-model runs (default 128)")
    parser.add_argument(
        "--parts",
        type=int,
        nargs="+",
        default=[1, 2, 3],
        choices=[1, 2, 3],
        help="which parts to run (default all; part 2 needs part 1's times)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: latent 16, 4 euler steps, LCM 2 and 4 steps, interval 2, 1 repeat",
    )
    args = parser.parse_args()
    if args.quick:
        args.latent, args.euler_steps, args.lcm_steps, args.intervals, args.repeats = 16, 4, [2, 4], [2], 1
        args.tiny_size = 64
    if 2 in args.parts and 1 not in args.parts:
        parser.error("--parts: part 2 needs part 1 (its expected speedups come from part 1's per-call times)")
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    print("$ python " + shlex.join(sys.argv))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; timings are noisy "
        "(other processes share the cores): per-call times are the fastest of repeats, runs are timed once"
    )
    kinds = run_kinds(args.euler_steps, args.lcm_steps)

    if 1 in args.parts:
        from lcm_accel.feature_cache import full_steps, skipped_fraction

        unet = full_size_unet(args.latent)
        skipped = {b: skipped_fraction(unet, b, args.latent, args.latent) for b in args.branches}
        t_full, partial = time_calls(unet, args.latent, args.branches, args.repeats)
        print_part1(args.latent, t_full, partial, skipped)
        if 2 in args.parts:
            branch = args.branches[0]
            n_full = 0
            for kind in kinds:
                steps_full = [sum(full_steps(kind.steps, i)) for i in args.intervals]
                n_full += kind.calls_per_step * (kind.steps + sum(steps_full))
            n_calls = sum(kind.calls_per_step * kind.steps for kind in kinds) * (1 + len(args.intervals))
            estimate = n_full * t_full + (n_calls - n_full) * partial[branch]
            print(
                f"\npart 2: {n_full} full + {n_calls - n_full} partial UNet calls, about {estimate / 60:.1f} min",
                flush=True,
            )
            runs = time_runs(unet, args.latent, kinds, args.intervals, branch)
            print_part2(runs, t_full, partial[branch], branch)
        del unet

    if 3 in args.parts:
        table = tiny_psnr(kinds, args.intervals, args.psnr_branches, args.tiny_size)
        print_part3(table, kinds, args.intervals, args.psnr_branches, args.tiny_size)

    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
