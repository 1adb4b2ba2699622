"""Builders shared by the test_lora_* files: tiny SD-shaped UNets and LoRA files written in the
real on-disk layouts (kohya, diffusers/PEFT, LDM). No tests here."""

from __future__ import annotations

import torch

from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya, write_peft  # noqa: F401 (re-exported)

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
# SSD-1B: SDXL with other transformer depths on the way up and a middle block of one ResBlock
# without attention (ComfyUI detects SSD-1B by transformer_depth_middle -1).
TINY_SSD1B = dict(
    TINY_SDXL, reverse_transformer_layers_per_block=((2, 1, 1), (1, 1, 1)), mid_block_type="UNetMidBlock2D"
)


def tiny_unet(config: dict = TINY_SD15, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # non-trivial weights everywhere
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


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


def diffusers_lora_unet(unet, paths, weights):
    """The reference: a copy of `unet` with the LoRA files loaded UNmerged by diffusers/peft."""
    import copy

    from diffusers import StableDiffusionPipeline

    ref = copy.deepcopy(unet)
    names = []
    for n, path in enumerate(paths):
        sd, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
        StableDiffusionPipeline.load_lora_into_unet(sd, alphas, ref, adapter_name=f"a{n}")
        names.append(f"a{n}")
    ref.set_adapters(names, weights=list(weights))
    return ref
