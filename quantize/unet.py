"""Quantize a UNet's Linear / Conv2d layers in place, keeping chosen layers in high precision.

    report = quantize_unet(unet, "int8")                       # default keep-list
    report = quantize_unet(unet, "int4", keep=["conv_in", "conv_out", "time_embedding*", "*attn2.to_k"],
                           group_size=128)

Keep patterns are shell-style globs (`fnmatch`) on module names; a pattern also keeps everything
under the module it names (`time_embedding` keeps `time_embedding.linear_1`). The default keeps the
first and last conv and the time embedding, in diffusers names (conv_in, conv_out, time_embedding.*)
and LDM / ComfyUI names (input_blocks.0.0, out.2, time_embed.*); a user pattern that matches no
layer is refused (a typo would silently quantize what the user meant to keep).

Merge-then-quantize: run `lora_merge.LoraPatcher(unet).apply(...)` first, then quantize: the
quantized weights are those of the merged model. Re-weighting a LoRA afterwards needs the merged
high-precision weights: with `keep_source=True` each quantized layer keeps its float Parameter
(the patcher's own, so re-weight and restore keep working) and re-quantizes from it on its next call
after a change. That costs the memory of the float weights (no saving over the float model: the
quantized copy comes on top) and one quantization of every changed layer (milliseconds per layer on
CPU). Without it, the float weights are dropped and `refuse_lora_on_quantized` explains why.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .formats import DEFAULT_GROUP_SIZE, check_group_size, normalize_format
from .modules import QUANT_MODULES, QuantConv2d, QuantLinear

DIFFUSERS_KEEP = ("conv_in", "conv_out", "time_embedding")
LDM_KEEP = ("input_blocks.0.0", "out.2", "time_embed")
DEFAULT_KEEP = DIFFUSERS_KEEP + LDM_KEEP


class QuantizeError(ValueError):
    """A quantization request that cannot be carried out (bad format, pattern or model); nothing changed."""


@dataclass
class QuantizeReport:
    """What `quantize_unet` did: the format, which layers were quantized / kept, and the bytes of
    the weights of the quantized layers before (their float dtype) and after."""

    format: str
    group_size: int | None
    keep_patterns: list[str]
    quantized: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    keep_source: bool = False

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def summary(self) -> str:
        mib = 1 << 20
        group = f", group size {self.group_size}" if self.group_size else ""
        return (
            f"{self.format}{group}: {len(self.quantized)} layers quantized, {len(self.kept)} kept "
            f"({', '.join(self.kept[:6])}{', ...' if len(self.kept) > 6 else ''}); weights "
            f"{self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB"
        )


def parse_keep(keep: str | Sequence[str] | None) -> list[str]:
    """Keep patterns from a comma-separated string or a list; `default` stands for DEFAULT_KEEP."""
    if keep is None:
        return list(DEFAULT_KEEP)
    items = keep.split(",") if isinstance(keep, str) else list(keep)
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise QuantizeError(f"keep patterns must be strings, got {item!r}")
        item = item.strip()
        if not item:
            continue
        patterns.extend(DEFAULT_KEEP if item == "default" else [item])
    return patterns


def _matches(name: str, pattern: str) -> bool:
    """The pattern names the module itself or a module it sits under."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def quantizable_layers(
    unet: torch.nn.Module | Sequence[tuple[str, torch.nn.Module]],
) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every Linear and Conv2d (zeros padding) in the UNet, in module order (`unet`
    may also be the (name, module) list of a host's view of the UNet)."""
    modules = unet.named_modules() if isinstance(unet, torch.nn.Module) else unet
    return [
        (name, m)
        for name, m in modules
        if isinstance(m, torch.nn.Linear) or isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros"
    ]


def split_layers(
    unet: torch.nn.Module | Sequence[tuple[str, torch.nn.Module]],
    keep: str | Sequence[str] | None = None,
) -> tuple[list[tuple[str, torch.nn.Module]], list[str], list[str]]:
    """(layers to quantize, names kept, patterns) after checking that every user pattern matches a layer."""
    patterns = parse_keep(keep)
    layers = quantizable_layers(unet)
    if not layers:
        raise QuantizeError("this model has no Linear or Conv2d layer to quantize (already quantized?)")
    names = [n for n, _ in layers]
    defaults = set(DEFAULT_KEEP)
    for pattern in patterns:
        if pattern not in defaults and not any(_matches(n, pattern) for n in names):
            examples = ", ".join(names[:3] + names[-2:])
            raise QuantizeError(
                f"keep pattern {pattern!r} matches no Linear/Conv2d layer of this UNet; layer "
                f"names look like: {examples} (globs such as '*attn2*' work)"
            )
    todo, kept = [], []
    for name, module in layers:
        (kept.append(name) if any(_matches(name, p) for p in patterns) else todo.append((name, module)))
    return todo, kept, patterns


def quantize_layer(
    module: torch.nn.Module,
    fmt: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    symmetric: bool = True,
    keep_source: bool = False,
    scales: torch.Tensor | None = None,
) -> torch.nn.Module:
    """The QuantLinear / QuantConv2d replacing one Linear / Conv2d (its weight as it is now)."""
    if isinstance(module, torch.nn.Linear):
        return QuantLinear.from_linear(module, fmt, group_size, symmetric, keep_source, scales)
    if isinstance(module, torch.nn.Conv2d):
        return QuantConv2d.from_conv(module, fmt, group_size, symmetric, keep_source, scales)
    raise QuantizeError(f"cannot quantize a {type(module).__name__}: only Linear and Conv2d")


def set_submodule(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    """Replace `root`'s submodule `name` (dotted path) on its own parent."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantize_unet(
    unet: torch.nn.Module,
    fmt: str,
    keep: str | Sequence[str] | None = None,
    keep_source: bool = False,
    group_size: int = DEFAULT_GROUP_SIZE,
    symmetric: bool = True,
) -> QuantizeReport:
    """Replace the UNet's Linear / Conv2d layers (except `keep`) by quantized ones, in place, on the
    same parent modules. Everything is checked before the first layer is swapped."""
    fmt = normalize_format(fmt)
    if fmt == "int4":
        check_group_size(group_size)
    todo, kept, patterns = split_layers(unet, keep)
    report = QuantizeReport(fmt, group_size if fmt == "int4" else None, patterns, kept=kept, keep_source=keep_source)
    for name, module in todo:
        quant = quantize_layer(module, fmt, group_size, symmetric, keep_source)
        report.bytes_before += module.weight.numel() * module.weight.element_size()
        report.bytes_after += quant.weight_nbytes
        set_submodule(unet, name, quant)
        report.quantized.append(name)
    return report


def quantized_layers(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the UNet's quantized layers."""
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, QUANT_MODULES)]


def is_quantized(unet: torch.nn.Module) -> bool:
    return any(True for _ in quantized_layers(unet))


def keeps_source(unet: torch.nn.Module) -> bool:
    """True when every quantized layer kept its high-precision source (LoRA re-weighting possible)."""
    layers = quantized_layers(unet)
    return bool(layers) and all(m.keeps_source for _, m in layers)


def refuse_lora_on_quantized(unet: torch.nn.Module, what: str = "LoRA") -> None:
    """Raise a clear error if `unet` is quantized without its source (a LoRA cannot be merged into it)."""
    if is_quantized(unet) and not keeps_source(unet):
        raise QuantizeError(
            f"cannot apply a {what} to a quantized UNet: its high-precision weights were dropped when it was "
            "quantized. Load the LoRAs before quantizing (merge-then-quantize), or quantize with keep_source "
            "enabled (keeps the float weights in memory and re-quantizes after each LoRA change)."
        )


def weight_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of the weights of these modules as stored (quantized layers count their quantized data)."""
    total = 0
    for m in modules:
        if isinstance(m, QUANT_MODULES):
            total += m.weight_nbytes
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            total += m.weight.numel() * m.weight.element_size()
    return total
