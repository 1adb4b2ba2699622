"""The share of a full-size SD1.5 UNet's multiply-adds that a DeepCache partial step skips, per branch.

    python benchmarks/bench_deepcache_flops.py [--latent 64] [--branches 0 1 2 3 5 8 11]

Random weights (the count does not depend on them); MACs of convs, linears and attention matmuls,
counted by `feature_cache.count_macs` on one call of the full and of the partial UNet (norms and
elementwise ops left out). This bounds the speed-up a cached step can give; times per step come
with the DeepCache node's benchmark.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel

from lcm_accel.feature_cache import skipped_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64, help="latent height and width (64 = 512x512 images)")
    parser.add_argument("--branches", type=int, nargs="+", default=[0, 1, 2, 3, 5, 8, 11])
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=args.latent, cross_attention_dim=768, attention_head_dim=8).eval()
    params = sum(p.numel() for p in unet.parameters())
    print(f"SD1.5 UNet, {params:,} parameters, latent {args.latent}x{args.latent}, batch 1, 77 tokens")
    print("branch  skipped MAC fraction")
    for branch in args.branches:
        print(f"{branch:6d}  {skipped_fraction(unet, branch, args.latent, args.latent):.4f}", flush=True)


if __name__ == "__main__":
    main()
