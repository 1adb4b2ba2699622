"""LCMQuantizeUNet on ComfyUI: a clone on its own UNet whose LoRA-merged layers are quantized.

ComfyUI's ModelPatcher keeps LoRAs as patches and adds them into the weights only when it loads the
model for sampling, so quantizing the stored weights would miss them. Here the merge happens at the
node: for every layer to quantize, the weight is computed as ComfyUI itself would patch it
(`comfy.lora.calculate_weight` over the clone's own patches for that key, on the unpatched base
weight) and quantized; the clone gets its OWN BaseModel (`_own_model_clone`): the quantized layers in
place of the float ones, every other tensor copied unpatched, and the weight patches of the quantized
layers removed (they are in the quantized weights). Nothing is swapped into the shared model, so other
clones of the checkpoint and their LoRA loaders are unaffected. What this saves: the model ComfyUI
moves to the GPU holds the quantized weights (plus the few % of tensors outside them); the float base
stays in system RAM where ComfyUI keeps it for its other clones. Quantized layers dequantize on the fly
(`quantize.modules`; fp8 uses `torch._scaled_mm` on GPUs that have it).

LoRAs added AFTER the node cannot reach the quantized weights: our loaders refuse them, and a load
callback refuses ComfyUI's own loaders' patches on quantized layers, naming the way out (load LoRAs
before LCMQuantizeUNet). keep_source is refused here: ComfyUI's lazy patching has no in-place float
source to re-quantize from.
"""

from __future__ import annotations

import copy
import uuid

import comfy.lora
import comfy.model_management
import comfy.patcher_extension
import comfy.utils
import torch

from ...quantize import QuantizeError, normalize_format, quantize_layer, split_layers
from . import inplace
from .lora import CombinedLoraPatch
from .unpatched import unpatched_named_modules

PREFIX = "diffusion_model."
QUANT_OPTION = "lcm_accel_quantized"
CALLBACK_KEY = "lcm_accel_quantize"


def _base_weight(model, key: str, current: torch.Tensor) -> torch.Tensor:
    """The unpatched weight: the backup of whichever loaded clone patched it, else the stored one."""
    for loaded in comfy.model_management.current_loaded_models:
        patcher = loaded.model
        if patcher is not None and patcher.model is model.model and key in patcher.backup:
            return patcher.backup[key].weight
    return current


def _merged(model, key: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor` with the clone's patches for `key` applied as ComfyUI applies them (float32), then our
    in-place mix on top (as it sits on top of ComfyUI's patches when the clone is loaded)."""
    if tensor is None:
        return None
    weight = _base_weight(model, key, tensor).detach().to(torch.float32, copy=True)
    if key in model.patches:
        weight = comfy.lora.calculate_weight(model.patches[key], weight, key)
    spec = inplace.inplace_spec(model)
    name = key[len(PREFIX) :]
    if spec is not None and name in spec.targets:
        patch = spec.patch_for(name, weight, fresh=True)  # W' = coef W + delta (coef: DoRA only)
        flat = weight.reshape(weight.shape[0], -1)
        if patch.coef is not None:
            flat = flat * patch.coef.to(flat)
        weight = flat.reshape(weight.shape) + patch.delta().to(weight.device)
    return weight


def _merged_layer(model, name: str, module: torch.nn.Module) -> torch.nn.Module:
    """A plain Linear / Conv2d with the layer's geometry holding its merged float weight and bias."""
    weight = _merged(model, f"{PREFIX}{name}.weight", module.weight)
    bias = _merged(model, f"{PREFIX}{name}.bias", module.bias)
    if isinstance(module, torch.nn.Linear):
        layer = torch.nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta")
    else:
        layer = torch.nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            bias=bias is not None,
            device="meta",
        )
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias.to(module.bias.dtype), requires_grad=False)
    return layer


def _refuse_late_patches(quantized_keys: frozenset[str]):
    def check(patcher, *args, **kwargs) -> None:
        late = sorted(k for k in patcher.patches if k in quantized_keys)
        if late:
            raise QuantizeError(
                f"LCMQuantizeUNet: {len(late)} LoRA patches (e.g. {late[0]!r}) were added after the UNet was "
                "quantized and cannot reach the quantized weights; load LoRAs before LCMQuantizeUNet."
            )

    return check


def _own_model_clone(model, quantized: dict[str, torch.nn.Module]):
    """A clone of the ModelPatcher on its OWN BaseModel: the quantized layers in place of the float ones, every
    other tensor copied as ComfyUI stores it (unpatched). Nothing is swapped into the shared model, so other
    clones of the checkpoint (and their LoRA loaders) never see the quantized layers; the copy costs only the
    tensors outside the quantized layers (norms, biases, kept layers: a few % of the UNet)."""
    base = model.model
    memo: dict[int, object] = {id(getattr(base, inplace.KEY, None)): None}  # the shared model's in-place state
    for key, original in _object_patch_backups(model).items():  # e.g. a loaded clone's LCM model_sampling
        memo[id(comfy.utils.get_attr(base, key))] = copy.deepcopy(original)
    for name, module in base.diffusion_model.named_modules():
        if name in quantized:
            memo[id(module)] = quantized[name]
    own = copy.deepcopy(base, memo)
    own_state = own.state_dict(keep_vars=True)
    for backup in _weight_backups(model):  # weights a loaded clone has LoRA-patched in place: the stored values
        for key, saved in backup.items():
            if key in own_state and key[len(PREFIX) :].rsplit(".", 1)[0] not in quantized:
                own_state[key].data.copy_(saved.weight)
    own.model_loaded_weight_memory, own.current_weight_patches_uuid = 0, None
    own.model_lowvram, own.lowvram_patch_counter = False, 0
    own.device = model.offload_device
    clone = model.clone()
    clone.model, clone.parent = own, None
    clone.backup, clone.object_patches_backup = {}, {}
    clone.size = 0
    clone.model_size()
    return clone


def _object_patch_backups(model) -> dict[str, object]:
    """{attribute path: original object} for every object patch now applied to `model`'s shared BaseModel."""
    backups = {}
    for patcher in [model] + [
        loaded.model
        for loaded in comfy.model_management.current_loaded_models
        if loaded.model is not None and loaded.model.model is model.model
    ]:
        backups.update(patcher.object_patches_backup)
    return backups


def _weight_backups(model) -> list[dict]:
    return [
        loaded.model.backup
        for loaded in comfy.model_management.current_loaded_models
        if loaded.model is not None and loaded.model.model is model.model
    ]


def quantize_model(model, fmt: str, keep: str, group_size: int = 64, keep_source: bool = False):
    """A clone of the ModelPatcher whose UNet layers are quantized from the LoRA-merged weights."""
    if keep_source:
        raise QuantizeError(
            "keep_source is not available in ComfyUI (ComfyUI patches LoRAs lazily; there is no "
            "float source to re-quantize): load the LoRAs before LCMQuantizeUNet instead"
        )
    if model.model_options.get(QUANT_OPTION):
        raise QuantizeError("this MODEL's UNet is already quantized: quantize the float model only once")
    fmt = normalize_format(fmt)
    controller = getattr(model.model, inplace.KEY, None)
    if controller is not None:  # the stored weights without any in-place mix (a loaded clone's is re-applied on load)
        controller.restore_all()
    todo, kept, _ = split_layers(unpatched_named_modules(model), keep)
    quantized = {name: quantize_layer(_merged_layer(model, name, module), fmt, group_size) for name, module in todo}
    clone = _own_model_clone(model, quantized)
    quantized_keys = {f"{PREFIX}{name}.{part}" for name in quantized for part in ("weight", "bias")}
    for key in quantized_keys:
        clone.patches.pop(key, None)
    _keep_inplace_mix_on_kept_layers(model, clone, quantized_keys)
    clone.patches_uuid = uuid.uuid4()
    clone.model_options[QUANT_OPTION] = {
        "format": fmt,
        "group_size": group_size,
        "kept": kept,
        "quantized": [n for n, _ in todo],
    }
    clone.add_callback_with_key(
        comfy.patcher_extension.CallbacksMP.ON_LOAD, CALLBACK_KEY, _refuse_late_patches(frozenset(quantized_keys))
    )
    return clone


def _keep_inplace_mix_on_kept_layers(model, clone, quantized_keys: set[str]) -> None:
    """The clone lives on its own BaseModel: our in-place machinery leaves it; the mix of the layers kept
    in float goes on as ComfyUI patches (the quantized layers already hold it)."""
    spec = inplace.inplace_spec(model)
    inplace.strip_inplace(clone)
    if spec is None:
        return
    params = dict(clone.model.diffusion_model.named_parameters())
    patches = {}
    for name in spec.targets:
        key = PREFIX + name
        if key not in quantized_keys and name in params:
            patches[key] = CombinedLoraPatch(key, spec.patch_for(name, params[name]))
    if patches:
        clone.add_patches(patches, 1.0)


def refuse_lora_on_quantized(model) -> None:
    """Our LoRA loaders on a quantized MODEL: refused with the way out."""
    if model.model_options.get(QUANT_OPTION):
        raise QuantizeError(
            "cannot apply a LoRA to a quantized UNet: its layers were quantized from the merged "
            "weights. Load the LoRAs before LCMQuantizeUNet (merge-then-quantize)."
        )
