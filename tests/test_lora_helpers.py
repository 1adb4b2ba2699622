"""Builders shared by the test_lora_* files: tiny SD-shaped UNets and LoRA files written in the
real on-disk layouts (kohya, diffusers/PEFT, LDM). No tests here."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_SD15 = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=8,
)
# SDXL block structure (no attention at the first level, deeper transformers lower down,
# text_time embedding), tiny channels.
TINY_SDXL = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=48,
    layers_per_block=2,
    transformer_layers_per_block=(1, 2),
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=8,
    use_linear_projection=True,
)
# SSD-1B: SDXL with fewer transformer blocks on the way up and no mid-block transformer.
TINY_SSD1B = dict(TINY_SDXL, reverse_transformer_layers_per_block=((2, 1, 1), (1, 1, 1)), mid_block_type=None)


def tiny_unet(config: dict = TINY_SD15, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # non-trivial weights everywhere
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


def lora_targets(unet, convs: bool = True) -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape for the layers an LCM-LoRA-style adapter trains."""
    wanted = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
    if convs:
        wanted += ("conv1", "conv2", "conv_shortcut", "time_emb_proj")
    out = {}
    for name, p in unet.named_parameters():
        if name.endswith(".weight") and name[: -len(".weight")].endswith(wanted) and p.dim() in (2, 4):
            out[name[: -len(".weight")]] = tuple(p.shape)
    return out


def random_factors(targets: dict, rank: int, seed: int, scale: float = 0.05, dtype=torch.float32):
    """module -> (down, up): conv down keeps the kernel (LoCon), conv up is 1x1."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for module, shape in targets.items():
        r = min(rank, shape[0], shape[1])
        down = torch.randn((r, *shape[1:]), generator=g) * scale
        up = torch.randn((shape[0], r, *([1, 1] if len(shape) == 4 else [])), generator=g) * scale
        factors[module] = (down.to(dtype), up.to(dtype))
    return factors


def write_kohya(path: Path, factors: dict, alpha: float | None, names=None) -> Path:
    """kohya layout: lora_unet_<path with '_'>.lora_down/.lora_up/.alpha."""
    tensors = {}
    for module, (down, up) in factors.items():
        key = "lora_unet_" + (names(module) if names else module).replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path))
    return path


def write_peft(path: Path, factors: dict, prefix: str = "unet.") -> Path:
    """diffusers/PEFT layout: unet.<path>.lora_A/lora_B.weight (no alpha: alpha = rank)."""
    tensors = {}
    for module, (down, up) in factors.items():
        tensors[f"{prefix}{module}.lora_A.weight"] = down.contiguous()
        tensors[f"{prefix}{module}.lora_B.weight"] = up.contiguous()
    save_file(tensors, str(path))
    return path


def snapshot(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, int, torch.nn.Parameter]]:
    return {n: (p.detach().clone(), p.data_ptr(), p) for n, p in module.named_parameters()}


def assert_unchanged(module: torch.nn.Module, snap) -> None:
    """Bit-identical values, same storage, same Parameter objects."""
    params = dict(module.named_parameters())
    assert params.keys() == snap.keys()
    for name, (value, ptr, obj) in snap.items():
        p = params[name]
        assert p is obj, name
        assert p.data_ptr() == ptr, name
        assert torch.equal(p.detach().view(torch.uint8), value.view(torch.uint8)), name
