"""Benchmark: in-place LoRA patch / re-weight / restore on a full-size SD1.5 UNet (random weights),
side by side with diffusers load_lora_weights + set_adapters + fuse_lora / unfuse_lora.

    python benchmarks/bench_lora_patch.py --dtype fp32 [--device cpu] [--quick]

Adapters: an LCM-LoRA-shaped one (rank 64, kohya layout, fp16 factors, alpha 8) on every attention
to_q/k/v/out, feed-forward, proj_in/out and resnet conv layer (3x3 LoCon down, 1x1 up), plus a
rank-16 style adapter (diffusers/PEFT layout) on the same layers; each adapter's delta is
~--relative-delta (1e-3) of the weight's std. Weights 1.0 and 0.8, re-weight
to 0.9 / 0.5. Timings on a busy machine are noisy.
"""
from __future__ import annotations

import argparse
import copy
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
    start = time.perf_counter()
    out = fn()
    sync(device)
    elapsed = time.perf_counter() - start
    now, peak = rss_mib()
    extra = {"rss_peak_extra_mib": peak - base, "rss_resident_extra_mib": now - base}
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
                store.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                              f"{key}.alpha": torch.tensor(8.0).half()})
            else:
                store.update({f"unet.{module}.lora_A.weight": down, f"unet.{module}.lora_B.weight": up})
    save_file(lcm, str(folder / "lcm_lora_shaped.safetensors"))
    save_file(style, str(folder / "style_rank16.safetensors"))
    return folder / "lcm_lora_shaped.safetensors", folder / "style_rank16.safetensors", count


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
    parser.add_argument("--relative-delta", type=float, default=1e-3,
                        help="each adapter's delta entries ~ this times the weight's std (default 1e-3)")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).to(device=device, dtype=dtype).eval().requires_grad_(False)
    folder = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    lcm_path, style_path, n_layers = write_adapters(unet, folder, args.quick, args.relative_delta)
    originals = {n: p.detach().clone() for n, p in unet.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in unet.named_parameters()}
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M params, {args.dtype} on {device}; "
          f"{n_layers} target layers; threads {torch.get_num_threads()}")

    ours: dict = {}
    loras = timed("load files", device, lambda: [load_lora(lcm_path), load_lora(style_path)], ours)
    patcher = LoraPatcher(unet)
    report = timed("apply", device, lambda: patcher.apply([(loras[0], 1.0), (loras[1], 0.8)]), ours)
    timed("reweight", device, lambda: patcher.reweight([0.9, 0.5]), ours)
    report = patcher.report
    timed("restore", device, patcher.restore, ours)
    exact = all(torch.equal(p.detach().view(torch.uint8), originals[n].view(torch.uint8))
                for n, p in unet.named_parameters())
    same_storage = all(p.data_ptr() == ptrs[n] for n, p in unet.named_parameters())
    print(report.summary())
    print(f"ours: bitwise restore {exact}, same data_ptrs {same_storage}, "
          f"sparse exceptions {report.exceptions} of {report.patched_weight_bytes // unet.dtype.itemsize} elements")

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

    print(f"\n{'phase':<11}{'ours s':>9}{'diffusers s':>13}{'ratio':>8}{'ours peak MiB':>15}{'diff peak MiB':>15}"
          f"{'ours resid MiB':>16}")
    for phase in ("load files", "apply", "reweight", "restore"):
        o, t = ours[phase], theirs.get(phase)
        ratio = f"{t['seconds'] / o['seconds']:.1f}x" if t else "-"
        print(f"{phase:<11}{o['seconds']:>9.2f}{(t['seconds'] if t else float('nan')):>13.2f}{ratio:>8}"
              f"{o['rss_peak_extra_mib']:>15.0f}{(t['rss_peak_extra_mib'] if t else float('nan')):>15.0f}"
              f"{o['rss_resident_extra_mib']:>16.0f}")
    pct = 100 * report.restore_state_bytes / report.patched_weight_bytes
    print(f"\nresident tensor bytes kept by ours: restore state {report.restore_state_bytes / 2**20:.1f} MiB "
          f"({pct:.3f}% of {report.patched_weight_bytes / 2**20:.0f} MiB patched weights), "
          f"factors {report.factor_bytes / 2**20:.1f} MiB ({100 * report.factor_bytes / report.patched_weight_bytes:.2f}%)")
    if device.type == "cuda":
        print({k: {m: round(v, 1) for m, v in d.items()} for k, d in ours.items()})


if __name__ == "__main__":
    main()
