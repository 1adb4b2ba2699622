"""Low-bit UNets on a full-size SD1.5 UNet (random weights, 860M parameters): weight memory and CPU
time per UNet call for fp32 / fp16 / fp8_e4m3 / int8 / int4 (group 64).

    python benchmarks/bench_quantize.py [--quick] [--repeats N] [--latent 64]

Memory: bytes of the Linear/Conv2d weights as stored (quantized layers: data + scales; conv_in,
conv_out and the time embedding stay float32, as the default keep-list does) plus everything
else (norms, biases). Time: one UNet call, batch 1, 64x64 latent, float32 compute on CPU (the
quantized layers dequantize each weight on the fly; the fp16 row stores fp16 and computes in fp32
too, the same dequantize-on-the-fly price). --quick: 1 timed call after 1 warm-up.
Timings on a shared 2-core machine are noisy; the memory figures are exact.
(The tiny-model PSNR before/after a QALoRA fine-tune comes with the fine-tune driver.)
"""
from __future__ import annotations

import argparse
import copy
import gc
import time

import torch


def _unet(latent: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=latent, cross_attention_dim=768, attention_head_dim=8).eval().requires_grad_(False)


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


def _time(unet, latent: int, repeats: int) -> float:
    x = torch.randn(1, 4, latent, latent)
    t = torch.tensor([500])
    cond = torch.randn(1, 77, 768)
    with torch.no_grad():
        unet(x, t, cond)
        start = time.perf_counter()
        for _ in range(repeats):
            unet(x, t, cond)
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> None:
    from lcm_accel.quantize import quantize_unet, split_layers
    from lcm_accel.quantize.unet import set_submodule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latent", type=int, default=64)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    torch.set_grad_enabled(False)
    base = _unet(args.latent)
    rows = []
    for fmt in ("fp32", "fp16", "fp8_e4m3", "int8", "int4"):
        unet = copy.deepcopy(base)
        if fmt == "fp16":
            for name, module in split_layers(unet)[0]:
                set_submodule(unet, name, _Fp16Stored(module))
        elif fmt != "fp32":
            quantize_unet(unet, fmt)
        gc.collect()
        rows.append((fmt, _total_bytes(unet), _time(unet, args.latent, repeats)))
        del unet
        gc.collect()
    fp32_bytes, fp32_time = rows[0][1], rows[0][2]
    print(f"SD1.5 UNet, random weights, batch 1, {args.latent}x{args.latent} latent, fp32 compute on CPU, "
          f"{torch.get_num_threads()} threads, {repeats} timed call(s)")
    print(f"{'format':10} {'weights MiB':>12} {'vs fp32':>8} {'vs fp16':>8} {'s / step':>9} {'vs fp32':>8}")
    fp16_bytes = rows[1][1]
    for fmt, nbytes, seconds in rows:
        print(f"{fmt:10} {nbytes / 2**20:12.1f} {nbytes / fp32_bytes:8.3f} {nbytes / fp16_bytes:8.3f} "
              f"{seconds:9.3f} {seconds / fp32_time:8.2f}")


if __name__ == "__main__":
    main()
