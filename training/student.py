"""The student: the frozen base UNet plus a peft LoRA on the layers an LCM-LoRA trains.

The teacher is the same UNet with the adapter switched off (`adapters_disabled`), so distilling
costs one UNet in memory. The target network is the student under no_grad, or an EMA of its LoRA
weights swapped in for the target pass (`LoraEMA`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# The modules diffusers' LCM-LoRA scripts put a LoRA on (attention, feed-forward, proj_in/out,
# resnet convs and time projections, down/upsampler convs); peft matches them as name suffixes.
LCM_LORA_TARGETS = (
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
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
ADAPTER = "default"


def require_training_packages() -> None:
    """Refuse early, with the install command, when accelerate or peft is missing."""
    missing = []
    for name in ("accelerate", "peft"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f'training needs {" and ".join(missing)}, which is not installed: pip install "comfyui-lcm-accel[train]"'
        )


def add_lora(
    unet: torch.nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = LCM_LORA_TARGETS
) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze `unet`, add a trainable LoRA (B = 0: the student starts equal to the teacher);
    returns the LoRA parameters by name. Draws the A factors from torch's global RNG."""
    require_training_packages()
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"--rank must be >= 1, got {rank}")
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=float(alpha or rank), target_modules=list(targets), init_lora_weights=True)
    unet.add_adapter(config, adapter_name=ADAPTER)
    params = lora_parameters(unet)
    if not params:
        raise ValueError(f"no module of the UNet matches the LoRA targets {targets}")
    for _, p in params:
        p.requires_grad_(True)
    return params


def lora_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The LoRA factors of a UNet carrying our peft adapter, by name (e.g. to train a distilled LoRA further)."""
    return [(n, p) for n, p in unet.named_parameters() if ".lora_" in n]


def store_base_in(unet: torch.nn.Module, dtype: torch.dtype) -> None:
    """The frozen base weights in `dtype` (half precision under mixed precision), the LoRA left in float32."""
    for name, p in unet.named_parameters():
        if ".lora_" not in name:
            p.data = p.data.to(dtype)


@contextmanager
def adapters_disabled(unet: torch.nn.Module) -> Iterator[None]:
    """Run the base UNet (the teacher) inside the block; the LoRA is back on afterwards."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def lora_factors(unet: torch.nn.Module) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, int]:
    """(module path -> (down, up) as float32 CPU tensors, alpha, rank) of the UNet's peft LoRA."""
    from peft.tuners.lora import LoraLayer

    factors, alphas, ranks = {}, set(), set()
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            down = module.lora_A[ADAPTER].weight.detach().float().cpu().clone()
            up = module.lora_B[ADAPTER].weight.detach().float().cpu().clone()
            factors[name] = (down, up)
            ranks.add(int(down.shape[0]))
            alphas.add(float(module.lora_alpha[ADAPTER]))
    if not factors:
        raise ValueError("the UNet carries no peft LoRA (call add_lora first)")
    if len(alphas) != 1 or len(ranks) != 1:
        raise ValueError(f"expected one rank and alpha for all LoRA layers, got ranks {ranks}, alphas {alphas}")
    return factors, alphas.pop(), ranks.pop()


class LoraEMA:
    """An exponential moving average of the LoRA weights, for the LCD target network. Works for any
    list of (name, parameter): with all of a UNet's parameters it is full-model distillation's EMA
    target (one more copy of the student, as a separate target UNet would be)."""

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], rate: float):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"--ema rate must be in (0, 1), got {rate}")
        self.rate = rate
        self.params = params
        self.shadow = {n: p.detach().clone() for n, p in params}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params:
            self.shadow[name].mul_(self.rate).add_(p.detach(), alpha=1 - self.rate)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA weights in the parameters inside the block, the live ones after. The two storages
        are exchanged (no copy: a full-model EMA costs no transient extra copy of the weights) and
        the parameters' version counters bumped (autograd still refuses a backward through a
        forward that ran before a swap). autocast's cache of low-precision weight casts is dropped
        on both sides: it is keyed by the parameter, so a student pass after the target pass in one
        autocast region would otherwise run on the cached casts of the EMA weights."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    @torch.no_grad()
    def _exchange(self) -> None:
        for name, p in self.params:
            p.data, self.shadow[name] = self.shadow[name], p.data
            torch.autograd.graph.increment_version(p)
        torch.clear_autocast_cache()

    def state_dict(self) -> dict:
        return {"rate": self.rate, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, tensor in state["shadow"].items():
            self.shadow[name].copy_(tensor)
