"""Low-bit UNets on a full-size SD1.5 UNet (random weights, 860M parameters): weight memory and time
per UNet call (and per 4-step LCM loop) for fp32 / fp16 / fp8_e4m3 / int8 / int4 (group 64).

    python benchmarks/bench_quantize.py [--quick] [--repeats N] [--latent 64] [--device cpu|cuda] [--e2e]

Memory: bytes of the Linear/Conv2d weights as stored (quantized layers: data + scales; conv_in,
conv_out and the time embedding stay float32, as the default keep-list does) plus everything
else (norms, biases). Time: one UNet call, batch 1, 64x64 latent, float32 compute on CPU (the
quantized layers dequantize each weight on the fly; the fp16 row stores fp16 and computes in fp32
too, the same dequantize-on-the-fly price). --quick: 1 timed call after 1 warm-up.
--device cuda: the UNet on the GPU, fp16 compute (fp16 row: native fp16 weights; quantized layers
dequantize to fp16 per call, fp8 Linear layers use `torch._scaled_mm` where it fits), and the 4-step
column: one 4-step LCM loop (4 UNet calls + the scheduler; text encoder and VAE excluded, the same
for every format). On the CPU the 4-step column needs --e2e (it is 4x the per-call time).
Timings on a shared 2-core machine are noisy; the memory figures are exact.
(The tiny-model PSNR before/after a QALoRA fine-tune: benchmarks/bench_qalora.py.)
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
from functools import partial

import torch


def _unet(latent: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return (
        UNet2DConditionModel(sample_size=latent, cross_attention_dim=768, attention_head_dim=8)
        .eval()
        .requires_grad_(False)
    )


class _Fp16Stored(torch.nn.Module):
    """A Linear/Conv2d whose weight is stored in fp16 and cast to the input dtype per call."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer
        layer.weight.data = layer.weight.data.half()

    def forward(self, x):
        w = self.layer.weight
        self.layer.weight = torch.nn.Parameter(w.float(), requires_grad=False)
        try:
            return self.layer(x)
        finally:
            self.layer.weight = w


def _total_bytes(unet) -> int:
    tensors = {id(t): t for t in list(unet.parameters()) + list(unet.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(run, device: torch.device, repeats: int) -> float:
    """Seconds per call of `run()` after one warm-up call."""
    with torch.no_grad():
        run()
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        _sync(device)
    return (time.perf_counter() - start) / repeats


def _place(unet, device: torch.device, dtype: torch.dtype):
    """Move to `device`; float tensors of the non-quantized modules to `dtype` (quantized data, fp8
    included, and its scales keep their storage: the layers dequantize to the input's dtype)."""
    from lcm_accel.quantize.modules import QUANT_MODULES

    for module in unet.modules():
        if isinstance(module, QUANT_MODULES):
            continue
        for _, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor is not None and tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    return unet.to(device)


def _lcm_loop(unet, x: torch.Tensor, cond: torch.Tensor):
    from lcm_accel.lcm_scheduler import lcm_timesteps, make_alphas_cumprod, sample_lcm_vp

    acp, timesteps = make_alphas_cumprod().to(x.device), lcm_timesteps(4, 50)
    generator = torch.Generator().manual_seed(0)  # per-step noise drawn on the CPU, then moved
    return lambda: sample_lcm_vp(
        lambda x_t, t, c: unet(x_t, t, c).sample,
        x,
        timesteps,
        acp,
        extra_args={"c": cond},
        disable=True,
        generator=generator,
    )


def main(argv=None) -> None:
    from lcm_accel.quantize import quantize_unet, split_layers
    from lcm_accel.quantize.unet import set_submodule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu (fp32 compute) or cuda[:N] (fp16 compute)")
    parser.add_argument("--e2e", action="store_true", help="on the CPU too: time a 4-step LCM loop per format")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this torch build sees no CUDA device")
    on_cuda = device.type == "cuda"
    compute = torch.float16 if on_cuda else torch.float32
    repeats = 1 if args.quick else args.repeats
    torch.set_grad_enabled(False)
    base = _unet(args.latent)
    x = torch.randn(1, 4, args.latent, args.latent).to(device, compute)
    t = torch.tensor([500], device=device)
    cond = torch.randn(1, 77, 768).to(device, compute)
    rows = []
    for fmt in ("fp32", "fp16", "fp8_e4m3", "int8", "int4"):
        unet = copy.deepcopy(base)
        if fmt == "fp16" and on_cuda:
            unet = unet.half()
        elif fmt == "fp16":
            for name, module in split_layers(unet)[0]:
                set_submodule(unet, name, _Fp16Stored(module))
        elif fmt != "fp32":
            quantize_unet(unet, fmt)
        nbytes = _total_bytes(unet)
        unet = _place(unet, device, torch.float32 if fmt == "fp32" else compute)
        inputs = (x.float(), cond.float()) if fmt == "fp32" else (x, cond)
        gc.collect()
        step = _time(partial(unet, inputs[0], t, inputs[1]), device, repeats)
        loop = _time(_lcm_loop(unet, *inputs), device, repeats) if on_cuda or args.e2e else float("nan")
        rows.append((fmt, nbytes, step, loop))
        unet = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    fp32_bytes, fp32_time = rows[0][1], rows[0][2]
    where = (
        f"fp16 compute on {torch.cuda.get_device_name(device)} (fp32 row: fp32)"
        if on_cuda
        else f"fp32 compute on CPU, {torch.get_num_threads()} threads"
    )
    print(f"SD1.5 UNet, random weights, batch 1, {args.latent}x{args.latent} latent, {where}, {repeats} timed call(s)")
    print(
        f"{'format':10} {'weights MiB':>12} {'vs fp32':>8} {'vs fp16':>8} {'s / step':>9} {'vs fp32':>8} "
        f"{'4-step s':>9}"
    )
    fp16_bytes = rows[1][1]
    for fmt, nbytes, seconds, loop in rows:
        print(
            f"{fmt:10} {nbytes / 2**20:12.1f} {nbytes / fp32_bytes:8.3f} {nbytes / fp16_bytes:8.3f} "
            f"{seconds:9.4f} {seconds / fp32_time:8.2f} {loop:9.4f}"
        )


if __name__ == "__main__":
    main()
