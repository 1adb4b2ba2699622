"""ComfyUI's diffusion model as its own layers are, without the object patches a loaded clone applied.

ComfyUI applies a clone's object patches to the shared model while that clone is loaded, and keeps it
loaded after the prompt. LCMQuantizeUNet's quantized layers are such patches: until ComfyUI unloads
that clone, walking `model.model.diffusion_model` finds QuantLinear / QuantConv2d layers with no float
weight, even from another clone of the same checkpoint. Our LoRA and quantize nodes read the layers
through this view: the original module wherever a loaded clone swapped one in.
"""

from __future__ import annotations

import comfy.model_management
import torch

PREFIX = "diffusion_model."


def replaced_modules(model) -> dict[str, torch.nn.Module]:
    """{layer path in the diffusion model: its original module} for every layer that an object patch of
    `model` or of a loaded clone sharing its model has replaced."""
    backups = [getattr(model, "object_patches_backup", {})]
    for loaded in comfy.model_management.current_loaded_models:
        patcher = loaded.model
        if patcher is not None and patcher.model is model.model:
            backups.append(patcher.object_patches_backup)
    return {
        key[len(PREFIX) :]: original
        for backup in backups
        for key, original in backup.items()
        if key.startswith(PREFIX) and isinstance(original, torch.nn.Module)
    }


def unpatched_named_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of the diffusion model in module order, original modules in place of replaced ones."""
    replaced = replaced_modules(model)

    def walk(prefix: str, module: torch.nn.Module):
        yield prefix, module
        for child_name, child in module.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            yield from walk(path, replaced.get(path, child))

    return list(walk("", model.model.diffusion_model))


def unpatched_parameters(model) -> dict[str, torch.Tensor]:
    """{parameter name: tensor} of the diffusion model as `named_parameters` gives it, through the view."""
    return {
        f"{path}.{name}" if path else name: tensor
        for path, module in unpatched_named_modules(model)
        for name, tensor in module.named_parameters(recurse=False)
    }
