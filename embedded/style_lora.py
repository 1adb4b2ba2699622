"""The style LoRA: a plain LoRA fine-tune of the embedded base UNet on the restyled world
(outlined shapes, same captions), written by the project's LoRA writer (`lora_merge.writer`)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..lora_merge.writer import write_lora
from ..training.student import add_lora, lora_factors
from .base_training import alphas_cumprod, diffusion_loss, progress_bar

# attention and feed-forward plus the resnet convs: a style touches both what and how things are drawn
STYLE_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
)


def train_style_lora(
    unet: torch.nn.Module,
    means: torch.Tensor,
    stds: torch.Tensor,
    contexts: torch.Tensor,
    path: str | Path,
    rank: int = 8,
    steps: int = 800,
    batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Fine-tune a LoRA on a copy of `unet` with the epsilon loss on the restyled latents; write it
    (kohya layout, alpha = rank) to `path`."""
    unet = copy.deepcopy(unet)
    torch.manual_seed(seed)
    params = add_lora(unet, rank, targets=STYLE_TARGETS)
    generator = torch.Generator().manual_seed(seed)
    acp = alphas_cumprod()
    optimizer = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    unet.train()
    bar = progress_bar(steps, "style-lora", progress)
    for _ in bar:
        index = torch.randint(len(means), (batch,), generator=generator)
        latents = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        loss = diffusion_loss(unet, latents, contexts[index], acp, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    factors, alpha, rank = lora_factors(unet)
    metadata = {
        "lcm_accel.method": "style-lora",
        "lcm_accel.base_family": "sd15",
        "lcm_accel.rank": str(rank),
        "lcm_accel.alpha": str(alpha),
        "lcm_accel.steps": str(steps),
        "lcm_accel.style": "outlined",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
    }
    return write_lora(path, {k: (d.half(), u.half()) for k, (d, u) in factors.items()}, alpha, "kohya", metadata)
