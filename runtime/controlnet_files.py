"""ControlNet files as people download them, read into a diffusers `ControlNetModel`, offline.

Two layouts, recognised by their keys as ComfyUI recognises them:
- the original (LDM / `cldm`) one of lllyasviel's `control_v11p_sd15_*.pth` / `.safetensors`:
  `control_model.input_blocks.*`, `control_model.zero_convs.*`, `control_model.input_hint_block.*`,
  `control_model.middle_block_out.*` (the `control_model.` prefix may be missing);
- diffusers' (`diffusion_pytorch_model.safetensors` of a ControlNetModel, often renamed):
  `controlnet_cond_embedding.*`, `controlnet_down_blocks.*`, `controlnet_mid_block.*`.

The LDM names are mapped here onto diffusers' (`ldm_to_diffusers`); the architecture (widths,
levels, blocks per level, transformer depths, hint channels, SDXL's add-embedding) is read from the
tensors, as ComfyUI does, never from a config file beside them. SD1.5 ControlNets have 8 heads,
SDXL ones 64-wide heads (the only values those families use). Files ComfyUI loads through other
classes (T2I-Adapters, Control-LoRAs, "difference" ControlNets, union ControlNets, SD3 / Flux /
HunyuanDiT ControlNets) are refused with a message that names what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_config import HEAD_DIM, SD15_HEADS, CheckpointFormatError
from .devices import Placement, current_placement

LDM_PREFIX = "control_model."
LDM_MARKER = "zero_convs.0.0.weight"
DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
SD2_CONTEXT_WIDTH = 1024  # OpenCLIP-H: SD2.x, which the standalone host does not run
SDXL_TIME_EMBED_DIM = 256  # SDXL's six size / crop ids, each embedded 256 wide
RESNET_NAMES = {  # LDM ResBlock part -> diffusers ResnetBlock2D part
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
TOP_LEVEL_NAMES = {  # LDM module -> diffusers module, outside the blocks
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "middle_block_out.0": "controlnet_mid_block",
}
UNION_KEYS = ("control_add_embedding.linear_1.bias", "task_embedding")
DIFFERENCE_KEY = "difference"
# keys of ControlNet-like files that ComfyUI reads through other classes; what they are
OTHER_CONTROL_FILES = (
    ("lora_controlnet", "a Control-LoRA"),
    ("after_proj_list.18.bias", "a HunyuanDiT ControlNet"),
    ("controlnet_blocks.0.weight", "an SD3 / Flux / Qwen-Image ControlNet"),
    ("controlnet_blocks.0.linear.weight", "a Flux (Mistoline) ControlNet"),
    ("adapter.body.0.resnets.0.block1.weight", "a T2I-Adapter"),
    ("body.0.block1.weight", "a T2I-Adapter"),
    ("conv_in.weight", "a T2I-Adapter or a UNet (not a ControlNet)"),
)


@dataclass(frozen=True)
class LoadedControlNet:
    """A ControlNet ready to run: the diffusers module, its family, file name and layout; `hint_channels`
    is what the hint image must have (3 for RGB hints); `global_average_pooling` (shuffle models)
    averages each residual over the picture, as ComfyUI does for files named `*_shuffle`."""

    model: torch.nn.Module
    family: str
    name: str
    layout: str
    hint_channels: int
    global_average_pooling: bool


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _resnet_part(rest: str, name: str, key: str) -> str:
    for old, new in RESNET_NAMES.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise CheckpointFormatError(f"{name}: unknown ResBlock parameter {key!r}")


def ldm_layers_per_block(state: dict[str, torch.Tensor]) -> int:
    """Res blocks per level of LDM ControlNet tensors (the input block before the first downsampler)."""
    downsamplers = _indices(state, r"input_blocks\.(\d+)\.0\.op\.weight")
    if downsamplers:
        return downsamplers[0] - 1
    return len(_indices(state, r"input_blocks\.(\d+)\.")) - 1


def _hint_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """LDM input_hint_block conv -> diffusers controlnet_cond_embedding conv (first: conv_in, last:
    conv_out, the ones between: blocks.0, blocks.1, ...; the SiLUs between them hold no weights)."""
    convs = _indices(state, r"input_hint_block\.(\d+)\.weight")
    names = {}
    for position, index in enumerate(convs):
        if position == 0:
            names[f"input_hint_block.{index}"] = "controlnet_cond_embedding.conv_in"
        elif position == len(convs) - 1:
            names[f"input_hint_block.{index}"] = "controlnet_cond_embedding.conv_out"
        else:
            names[f"input_hint_block.{index}"] = f"controlnet_cond_embedding.blocks.{position - 1}"
    return names


def ldm_to_diffusers(state: dict[str, torch.Tensor], name: str = "controlnet") -> dict[str, torch.Tensor]:
    """Rename LDM ControlNet tensors (keys without `control_model.`) to diffusers' ControlNetModel names."""
    layers = ldm_layers_per_block(state)
    if layers < 1:
        raise CheckpointFormatError(f"{name}: the ControlNet has no res blocks in its input blocks")
    per_level = layers + 1  # res blocks (+ attention) and one downsampler per level
    modules = {**TOP_LEVEL_NAMES, **_hint_names(state)}
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in modules:
            out[f"{modules[module]}.{leaf}"] = value
            continue
        parts = key.split(".")
        if parts[0] == "zero_convs" and parts[2] == "0":
            out[f"controlnet_down_blocks.{parts[1]}.{'.'.join(parts[3:])}"] = value
        elif parts[0] == "input_blocks":
            level, slot = divmod(int(parts[1]) - 1, per_level)
            rest = ".".join(parts[3:])
            if slot == layers:
                if parts[2:4] != ["0", "op"]:
                    raise CheckpointFormatError(f"{name}: unexpected key {key!r} where a downsampler belongs")
                out[f"down_blocks.{level}.downsamplers.0.conv.{'.'.join(parts[4:])}"] = value
            elif parts[2] == "0":
                out[f"down_blocks.{level}.resnets.{slot}.{_resnet_part(rest, name, key)}"] = value
            elif parts[2] == "1":
                out[f"down_blocks.{level}.attentions.{slot}.{rest}"] = value
            else:
                raise CheckpointFormatError(f"{name}: unexpected input block key {key!r}")
        elif parts[0] == "middle_block":
            rest = ".".join(parts[2:])
            if parts[1] == "1":
                out[f"mid_block.attentions.0.{rest}"] = value
            elif parts[1] in ("0", "2"):
                out[f"mid_block.resnets.{int(parts[1]) // 2}.{_resnet_part(rest, name, key)}"] = value
            else:
                raise CheckpointFormatError(f"{name}: unexpected middle block key {key!r}")
        else:
            raise CheckpointFormatError(f"{name}: no ControlNet parameter is named like {key!r}")
    return out


def _depth(state: dict[str, torch.Tensor], block: str) -> int:
    return len(_indices(state, re.escape(block) + r"\.transformer_blocks\.(\d+)\."))


def infer_controlnet_config(state: dict[str, torch.Tensor], name: str) -> tuple[str, dict]:
    """(family, diffusers `ControlNetModel` config) from diffusers-named ControlNet tensors."""
    levels = _indices(state, r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight")
    if not levels or "conv_in.weight" not in state:
        raise CheckpointFormatError(f"{name}: the ControlNet has no down blocks (no 'down_blocks.0.resnets.0')")
    layers = len(_indices(state, r"down_blocks\.0\.resnets\.(\d+)\.conv1\.weight"))
    channels = [int(state[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0]) for level in levels]
    depths = [_depth(state, f"down_blocks.{level}.attentions.0") for level in levels]
    widths = sorted({int(v.shape[1]) for k, v in state.items() if k.endswith("attn2.to_k.weight")})
    if len(widths) != 1:
        raise CheckpointFormatError(f"{name}: not an SD1.5 / SDXL ControlNet (cross-attention widths {widths})")
    context = widths[0]
    has_add_embedding = "add_embedding.linear_1.weight" in state
    if context == SD2_CONTEXT_WIDTH and not has_add_embedding:
        raise CheckpointFormatError(
            f"{name}: an SD2.x ControlNet (1024-wide cross-attention); only SD1.5 and SDXL ControlNets run"
        )
    family = "sdxl" if has_add_embedding else "sd15"  # as the UNet loader tells them apart
    hint = [int(state["controlnet_cond_embedding.conv_in.weight"].shape[0])]
    blocks = _indices(state, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    hint += [int(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]) for i in blocks if i % 2 == 1]
    proj_in = next((v for k, v in state.items() if k.endswith(".proj_in.weight")), None)
    mid_depth = _depth(state, "mid_block.attentions.0")
    config = {
        "in_channels": int(state["conv_in.weight"].shape[1]),
        "conditioning_channels": int(state["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": context,
        "attention_head_dim": SD15_HEADS if family == "sd15" else [max(c // HEAD_DIM, 1) for c in channels],
        "use_linear_projection": proj_in is not None and proj_in.ndim == 2,
        "transformer_layers_per_block": [d or 1 for d in depths],
        "conditioning_embedding_out_channels": hint,
    }
    if not mid_depth and not any(k.startswith("mid_block.attentions.") for k in state):
        config["mid_block_type"] = "UNetMidBlock2D"
    elif mid_depth != config["transformer_layers_per_block"][-1]:
        raise CheckpointFormatError(
            f"{name}: the middle block has {mid_depth} transformer layers but the last level "
            f"{config['transformer_layers_per_block'][-1]}; diffusers' ControlNetModel cannot represent this"
        )
    if has_add_embedding:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=int(state["add_embedding.linear_1.weight"].shape[1]),
        )
    return family, config


def controlnet_layout(state: dict[str, torch.Tensor], name: str) -> tuple[str, dict[str, torch.Tensor]]:
    """("ldm" | "diffusers", the tensors in diffusers names) of a ControlNet file's tensors; other
    control files are refused naming what they look like."""
    if DIFFUSERS_MARKER in state:
        if any(key in state for key in UNION_KEYS):
            raise CheckpointFormatError(f"{name}: a union ControlNet, which the standalone host does not run")
        return "diffusers", dict(state)
    for prefix in (LDM_PREFIX, ""):
        if prefix + LDM_MARKER in state:
            if DIFFERENCE_KEY in state:
                raise CheckpointFormatError(
                    f"{name}: a 'difference' ControlNet (it needs DiffControlNetLoader and the base model), "
                    "which the standalone host lacks"
                )
            ldm = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            return "ldm", ldm_to_diffusers(ldm, name)
    for key, what in OTHER_CONTROL_FILES:
        if key in state:
            raise CheckpointFormatError(f"{name}: {what}, not a ControlNet the standalone host runs")
    sample = ", ".join(sorted(state)[:3]) or "no tensors"
    raise CheckpointFormatError(
        f"{name}: not a ControlNet (neither '{LDM_PREFIX}{LDM_MARKER}' nor '{DIFFUSERS_MARKER}'; found {sample} ...)"
    )


def uses_global_average_pooling(path: Path) -> bool:
    """ComfyUI's rule: shuffle ControlNets (file stem ending `_shuffle` / `_shuffle_fp16`) average
    their residuals over the picture."""
    return path.stem.endswith(("_shuffle", "_shuffle_fp16"))


_CACHE: dict[tuple, LoadedControlNet] = {}


def load_controlnet_file(path: str | Path, placement: Placement | None = None) -> LoadedControlNet:
    """The ControlNet in `path` (either layout), built on the placement's device in the UNet dtype;
    cached by (path, modification time, placement)."""
    from diffusers import ControlNetModel

    from .checkpoints import build_with_weights, read_state_dict

    placement = current_placement() if placement is None else placement
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime_ns, placement.key())
    if key not in _CACHE:
        state = read_state_dict(path)
        layout, weights = controlnet_layout(state, path.name)
        family, config = infer_controlnet_config(weights, path.name)
        pooling = uses_global_average_pooling(path)
        config["global_pool_conditions"] = pooling
        model = build_with_weights(
            lambda: ControlNetModel(**config), weights, "ControlNet", path.name, placement.device, placement.unet_dtype
        )
        _CACHE[key] = LoadedControlNet(model, family, path.name, layout, config["conditioning_channels"], pooling)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget every cached ControlNet."""
    _CACHE.clear()
