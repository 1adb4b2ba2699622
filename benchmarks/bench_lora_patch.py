"""Benchmark: in-place LoRA patch / re-weight / restore on a full-size SD1.5 UNet (random weights),
side by side with diffusers load_lora_weights + set_adapters + fuse_lora / unfuse_lora.

    python benchmarks/bench_lora_patch.py --dtype fp32 [--device cpu] [--quick]
    python benchmarks/bench_lora_patch.py --state-table [--quick]   # state size vs strength x dtype

Adapters: an LCM-LoRA-shaped one (rank 64, kohya layout, fp16 factors, alpha 8) on every attention
to_q/k/v/out, feed-forward, proj_in/out and resnet conv layer (3x3 LoCon down, 1x1 up), plus a
rank-16 style adapter (diffusers/PEFT layout) on the same layers; each adapter's delta is
~--relative-delta (1e-3) of the weight's std. Weights 1.0 and 0.8, re-weight
to 0.9 / 0.5. Timings on a busy machine are noisy (--repeat N keeps the fastest of N; CPU seconds
are printed beside wall seconds).

--lokr: a LoKr adapter (made by peft's LoKr layers, rank 8, on the same layers, exported in
kohya LyCORIS layout) together with the LCM-LoRA-shaped file: our apply / re-weight / restore and
restore state, beside peft's own merge / unmerge of the LoKr alone (peft cannot merge a LoKr and a
LoRA adapter of one model together, and its unmerge is not exact).

--state-table: for relative deltas 1e-3, 1e-2, 3e-2, 1e-1 and fp32 / fp16 / bf16 target weights,
the restore state's size (% of the patched weights' bytes), the exception rate (elements where
t(t(W + D) - D) != W) and apply / re-weight / restore seconds; every restore is checked bit-exact.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lcm_accel.lora_merge import LoraPatcher, load_lora

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8)  # diffusers defaults are the SD1.5 layout
LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2")


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(label: str, device: torch.device, fn, results: dict):
    reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = rss_mib()[0]
    cuda_base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    now, peak = rss_mib()
    extra = {"cpu_seconds": cpu, "rss_peak_extra_mib": peak - base, "rss_resident_extra_mib": now - base}
    if device.type == "cuda":
        extra["cuda_peak_extra_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_base) / 2**20
        extra["cuda_resident_extra_mib"] = (torch.cuda.memory_allocated(device) - cuda_base) / 2**20
    results[label] = {"seconds": elapsed, **extra}
    return out


def write_adapters(unet, folder: Path, quick: bool, args_relative: float) -> tuple[Path, Path, int]:
    """LCM-shaped kohya file (rank 64) and a rank-16 PEFT style file; returns paths and layer count."""
    g = torch.Generator().manual_seed(0)
    lcm, style, count = {}, {}, 0
    for name, p in unet.named_parameters():
        module = name[: -len(".weight")]
        if not name.endswith(".weight") or not module.endswith(LAYERS) or p.dim() not in (2, 4):
            continue
        if quick and count >= 40:
            break
        count += 1
        shape = tuple(p.shape)
        for rank, store, kohya in ((64, lcm, True), (16, style, False)):
            # delta entries ~ relative * std(W): with alpha/r = 8/64 (lcm) or 1 (style), 0.02 * u * sqrt(r) * s
            scale = 8 / 64 if kohya else 1.0
            u = args_relative * float(p.float().std()) / (0.02 * rank**0.5 * scale)
            down = (torch.randn((rank, *shape[1:]), generator=g) * 0.02).half()
            up = (torch.randn((shape[0], rank, *([1, 1] if len(shape) == 4 else [])), generator=g) * u).half()
            if kohya:
                key = "lora_unet_" + module.replace(".", "_")
                store.update(
                    {
                        f"{key}.lora_down.weight": down,
                        f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(8.0).half(),
                    }
                )
            else:
                store.update({f"unet.{module}.lora_A.weight": down, f"unet.{module}.lora_B.weight": up})
    save_file(lcm, str(folder / "lcm_lora_shaped.safetensors"))
    save_file(style, str(folder / "style_rank16.safetensors"))
    return folder / "lcm_lora_shaped.safetensors", folder / "style_rank16.safetensors", count


def _patch_cycle(unet, params: dict, loras: list, repeat: int) -> dict:
    """apply, re-weight, restore `repeat` times on `params`; the fastest of each phase (wall, CPU),
    the report of the last apply + re-weight, and whether every restore was bit-exact."""
    before = {n: p.detach().clone() for n, p in params.items()}
    best: dict = {}
    exact, report = True, None
    for _ in range(repeat):
        patcher = LoraPatcher(unet, params=params)
        for phase, fn in (
            ("apply", lambda: patcher.apply([(loras[0], 1.0), (loras[1], 0.8)])),
            ("reweight", lambda: patcher.reweight([0.9, 0.5])),
            ("restore", patcher.restore),
        ):
            if phase == "restore":
                report = patcher.report
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            old = best.get(phase, (float("inf"), float("inf")))
            best[phase] = (min(old[0], wall), min(old[1], cpu))
        exact &= all(torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8)) for n, p in params.items())
    return {"times": best, "report": report, "exact": exact}


def state_table(unet, folder: Path, quick: bool, repeat: int) -> None:
    """Restore-state size and exception rate vs adapter strength and weight dtype (CPU)."""
    print(
        f"\n{'dtype':<6}{'rel. delta':>11}{'state % of patched':>20}{'exceptions %':>14}"
        f"{'apply s':>9}{'reweight s':>11}{'restore s':>10}{'rw/apply (cpu)':>16}  exact"
    )
    for rel in (1e-3, 1e-2, 3e-2, 1e-1):
        sub = folder / f"rel{rel:g}"
        sub.mkdir(exist_ok=True)
        lcm_path, style_path, _ = write_adapters(unet, sub, quick, rel)
        loras = [load_lora(lcm_path), load_lora(style_path)]
        targets = set(LoraPatcher(unet).check([(loras[0], 1.0), (loras[1], 0.8)]).targets)
        for dtype_name in ("fp32", "fp16", "bf16"):
            params = dict(unet.named_parameters())
            for name in targets:  # the patched weights in this dtype, the rest untouched
                params[name] = torch.nn.Parameter(params[name].detach().to(DTYPES[dtype_name]), requires_grad=False)
            out = _patch_cycle(unet, params, loras, repeat)
            r, t = out["report"], out["times"]
            print(
                f"{dtype_name:<6}{rel:>11g}{100 * r.restore_state_bytes / r.patched_weight_bytes:>19.3f}%"
                f"{100 * r.exceptions * DTYPES[dtype_name].itemsize / r.patched_weight_bytes:>13.3f}%"
                f"{t['apply'][0]:>9.3f}{t['reweight'][0]:>11.3f}{t['restore'][0]:>10.3f}"
                f"{t['reweight'][1] / t['apply'][1]:>16.2f}  {out['exact']}"
            )


def write_lokr(unet, folder: Path, quick: bool, relative: float):
    """peft LoKr (rank 8, random factors) on the benchmark's layers of `unet`, each scaled so its delta
    is ~`relative` of the weight's std; returns (kohya LyCORIS file, PeftModel wrapping `unet`)."""
    from peft import LoKrConfig, get_peft_model

    names = [
        n[: -len(".weight")]
        for n, p in unet.named_parameters()
        if n.endswith(".weight") and n[: -len(".weight")].endswith(LAYERS) and p.dim() in (2, 4)
    ]
    names = names[:40] if quick else names
    rank = 8
    model = get_peft_model(unet, LoKrConfig(r=rank, alpha=rank, target_modules=names, init_weights=False))
    tensors = {}
    with torch.no_grad():
        for name in names:
            layer = model.base_model.model.get_submodule(name)
            delta = layer.get_delta_weight("default")
            layer.lokr_w1["default"].mul_(relative * float(layer.get_base_layer().weight.std()) / float(delta.std()))
            key = "lora_unet_" + name.replace(".", "_")
            for role in layer.adapter_layer_names:
                if "default" in getattr(layer, role):
                    tensors[f"{key}.{role}"] = getattr(layer, role)["default"].detach().clone().contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    path = folder / "lokr_rank8.safetensors"
    save_file(tensors, str(path))
    return path, model


def lokr_row(unet, folder: Path, quick: bool, relative: float, lcm_path: Path, device: torch.device) -> None:
    """LoKr + LCM-LoRA through our patcher; peft's merge / unmerge of the same LoKr beside it."""
    lokr_path, model = write_lokr(unet, folder, quick, relative)
    theirs: dict = {}
    timed("apply", device, lambda: model.base_model.merge_adapter(), theirs)
    timed("restore", device, lambda: model.base_model.unmerge_adapter(), theirs)
    base = model.unload()  # the UNet without peft's wrappers (unmerged, so not bit-exact any more)
    loras = [load_lora(lokr_path), load_lora(lcm_path)]
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    patcher = LoraPatcher(base)
    ours: dict = {}
    timed("apply", device, lambda: patcher.apply([(loras[0], 1.0), (loras[1], 1.0)]), ours)
    timed("reweight", device, lambda: patcher.reweight([0.8, 1.0]), ours)
    report = patcher.report
    timed("restore", device, patcher.restore, ours)
    exact = all(
        torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8)) for n, p in base.named_parameters()
    )
    print(
        f"\nLoKr (rank 8, peft-made, {len(loras[0].unet)} layers) + LCM-LoRA, relative delta {relative:g}: "
        f"bitwise restore {exact}"
    )
    print(
        f"{'phase':<10}{'ours s':>9}{'ours cpu s':>12}{'peft LoKr alone s':>19}{'peft cpu s':>12}"
        f"{'ours peak MiB':>15}{'peft peak MiB':>15}"
    )
    nan = {"seconds": float("nan"), "cpu_seconds": float("nan"), "rss_peak_extra_mib": float("nan")}
    for phase in ("apply", "reweight", "restore"):
        o, t = ours[phase], theirs.get(phase, nan)
        print(
            f"{phase:<10}{o['seconds']:>9.2f}{o['cpu_seconds']:>12.2f}{t['seconds']:>19.2f}{t['cpu_seconds']:>12.2f}"
            f"{o['rss_peak_extra_mib']:>15.0f}{t['rss_peak_extra_mib']:>15.0f}"
        )
    print(
        f"restore state {report.restore_state_bytes / 2**20:.1f} MiB "
        f"({100 * report.restore_state_bytes / report.patched_weight_bytes:.3f}% of "
        f"{report.patched_weight_bytes / 2**20:.0f} MiB patched), {report.exceptions} exceptions; "
        "peft keeps no restore state (its unmerge subtracts the delta again, inexactly)"
    )


def changed_fraction(unet, originals: dict) -> float:
    changed = total = 0
    for name, p in unet.named_parameters():
        if name in originals:
            changed += int((p.detach() != originals[name]).sum())
            total += p.numel()
    return changed / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="only the first 40 target layers")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument(
        "--relative-delta",
        type=float,
        default=1e-3,
        help="each adapter's delta entries ~ this times the weight's std (default 1e-3)",
    )
    parser.add_argument(
        "--state-table",
        action="store_true",
        help="only the restore-state / exception-rate table over strengths and dtypes (CPU)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="--state-table: fastest of N cycles")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--lokr", action="store_true", help="only the LoKr + LCM-LoRA row (beside peft's LoKr)")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).to(device=device, dtype=dtype).eval().requires_grad_(False)
    folder = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    if args.state_table:
        state_table(unet, folder, args.quick, args.repeat)
        return
    lcm_path, style_path, n_layers = write_adapters(unet, folder, args.quick, args.relative_delta)
    if args.lokr:
        lokr_row(unet, folder, args.quick, args.relative_delta, lcm_path, device)
        return
    originals = {n: p.detach().clone() for n, p in unet.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in unet.named_parameters()}
    print(
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M params, {args.dtype} on {device}; "
        f"{n_layers} target layers; threads {torch.get_num_threads()}"
    )

    ours: dict = {}
    loras = timed("load files", device, lambda: [load_lora(lcm_path), load_lora(style_path)], ours)
    patcher = LoraPatcher(unet)
    report = timed("apply", device, lambda: patcher.apply([(loras[0], 1.0), (loras[1], 0.8)]), ours)
    timed("reweight", device, lambda: patcher.reweight([0.9, 0.5]), ours)
    report = patcher.report
    timed("restore", device, patcher.restore, ours)
    exact = all(
        torch.equal(p.detach().view(torch.uint8), originals[n].view(torch.uint8)) for n, p in unet.named_parameters()
    )
    same_storage = all(p.data_ptr() == ptrs[n] for n, p in unet.named_parameters())
    print(report.summary())
    print(
        f"ours: bitwise restore {exact}, same data_ptrs {same_storage}, "
        f"sparse exceptions {report.exceptions} of {report.patched_weight_bytes // unet.dtype.itemsize} elements"
    )

    theirs: dict = {}
    if not args.skip_diffusers:

        def load():
            for name, path in (("lcm", lcm_path), ("style", style_path)):
                sd, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
                StableDiffusionPipeline.load_lora_into_unet(sd, alphas, unet, adapter_name=name)
            unet.set_adapters(["lcm", "style"], weights=[1.0, 0.8])

        timed("load files", device, load, theirs)
        timed("apply", device, lambda: unet.fuse_lora(adapter_names=["lcm", "style"]), theirs)

        def reweight():
            unet.unfuse_lora()
            unet.set_adapters(["lcm", "style"], weights=[0.9, 0.5])
            unet.fuse_lora(adapter_names=["lcm", "style"])

        timed("reweight", device, reweight, theirs)
        timed("restore", device, unet.unfuse_lora, theirs)
        unet.unload_lora()
        frac = changed_fraction(unet, originals)
        print(f"diffusers: {100 * frac:.3f}% of weights differ from the originals after unfuse_lora")

    print(
        f"\n{'phase':<11}{'ours s':>9}{'ours cpu s':>12}{'diffusers s':>13}{'ratio':>8}{'ours peak MiB':>15}"
        f"{'diff peak MiB':>15}{'ours resid MiB':>16}"
    )
    for phase in ("load files", "apply", "reweight", "restore"):
        o, t = ours[phase], theirs.get(phase)
        ratio = f"{t['seconds'] / o['seconds']:.1f}x" if t else "-"
        theirs_s = t["seconds"] if t else float("nan")
        print(
            f"{phase:<11}{o['seconds']:>9.2f}{o['cpu_seconds']:>12.2f}{theirs_s:>13.2f}{ratio:>8}"
            f"{o['rss_peak_extra_mib']:>15.0f}{(t['rss_peak_extra_mib'] if t else float('nan')):>15.0f}"
            f"{o['rss_resident_extra_mib']:>16.0f}"
        )
    pct = 100 * report.restore_state_bytes / report.patched_weight_bytes
    print(
        f"\nresident tensor bytes kept by ours: restore state {report.restore_state_bytes / 2**20:.1f} MiB "
        f"({pct:.3f}% of {report.patched_weight_bytes / 2**20:.0f} MiB patched weights), "
        f"factors {report.factor_bytes / 2**20:.1f} MiB ({100 * report.factor_bytes / report.patched_weight_bytes:.2f}%)"
    )
    if device.type == "cuda":
        print({k: {m: round(v, 1) for m, v in d.items()} for k, d in ours.items()})


if __name__ == "__main__":
    main()
