"""How much of a UNet's arithmetic a DeepCache partial step skips.

Multiply-adds (MACs) are counted by forward hooks on one full call: convolutions and linear
layers from their weight shapes and output sizes, attention from its two matmuls (Q·Kᵀ and
attention·V: 2 · batch · query tokens · key tokens · inner width). Norms, activations and
elementwise ops are left out: they are a few percent of the total and memory-bound anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .deepcache import skipped_modules


def _conv_macs(module: torch.nn.Conv2d, output: torch.Tensor) -> int:
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return output.numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: torch.nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def _attention_macs(module: torch.nn.Module, args: tuple, kwargs: dict) -> int:
    hidden = args[0] if args else kwargs["hidden_states"]
    context = kwargs.get("encoder_hidden_states")
    if context is None and len(args) > 1:
        context = args[1]
    batch = hidden.shape[0]
    queries = hidden.shape[1] if hidden.ndim == 3 else hidden.shape[2] * hidden.shape[3]
    keys = queries if context is None else context.shape[1]
    return 2 * batch * queries * keys * module.inner_dim


def count_macs(unet: torch.nn.Module, call: Callable[[], object]) -> dict[str, int]:
    """MACs per module name over whatever `call()` runs (only modules that actually execute count)."""
    from diffusers.models.attention_processor import Attention

    macs: dict[str, int] = {}
    handles = []

    def add(name: str, value: int) -> None:
        macs[name] = macs.get(name, 0) + int(value)

    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: add(name, _conv_macs(m, out))))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: add(name, _linear_macs(m, out))))
        elif isinstance(module, Attention):
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, a, kw, name=name: add(name, _attention_macs(m, a, kw)), with_kwargs=True
                )
            )
    try:
        with torch.no_grad():
            call()
    finally:
        for handle in handles:
            handle.remove()
    return macs


def example_inputs(
    unet: torch.nn.Module, latent_height: int, latent_width: int, batch: int = 1, context_length: int = 77
) -> dict:
    """Zero inputs of the right shapes for one call of `unet` (SD1.5- and SDXL-style conditioning)."""
    config = unet.config
    parameter = next(unet.parameters())
    like = dict(dtype=parameter.dtype, device=parameter.device)
    inputs = {
        "sample": torch.zeros(batch, config.in_channels, latent_height, latent_width, **like),
        "timestep": torch.tensor(500, device=parameter.device),
        "encoder_hidden_states": torch.zeros(batch, context_length, config.cross_attention_dim, **like),
    }
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch, text_dim, **like),
            "time_ids": torch.zeros(batch, 6, **like),
        }
    elif config.addition_embed_type is not None:
        raise ValueError(f"example_inputs: addition_embed_type {config.addition_embed_type!r} is not supported")
    return inputs


def skipped_fraction(
    unet: torch.nn.Module, branch: int, latent_height: int = 64, latent_width: int = 64, context_length: int = 77
) -> float:
    """Share of one full UNet call's MACs that a partial step at `branch` skips, at this latent size."""
    skipped = skipped_modules(unet, branch)
    inputs = example_inputs(unet, latent_height, latent_width, context_length=context_length)
    macs = count_macs(unet, lambda: unet(**inputs))
    total = sum(macs.values())
    in_skipped = sum(v for name, v in macs.items() if any(name == s or name.startswith(s + ".") for s in skipped))
    return in_skipped / total
