"""The ComfyUI-detectable fixture models (cheap checks for CI; the ComfyUI integration tests load
them for real): the UNets have the layouts ComfyUI's model detection accepts, and the folder
writer copies the tokenizer, writes the input picture and refuses bad arguments."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from lcm_accel.fixtures.comfyui_models import COMFYUI_INPUT_SIZE, sd15_unet, vega_unet, write_comfyui_models_dir
from lcm_accel.fixtures.demo_models import INPUT_IMAGES
from lcm_accel.fixtures.ldm_keys import unet_to_ldm

# what comfy/supported_models.py matches on (SD15, Segmind_Vega); input-block depths are ComfyUI's
# per-res-block `transformer_depth` list
COMFYUI_DETECTION = {
    "sd15": dict(model_channels=320, context_dim=768, adm_in_channels=None, use_linear_in_transformer=False),
    "sdxl": dict(
        model_channels=320,
        context_dim=2048,
        adm_in_channels=2816,
        use_linear_in_transformer=True,
        transformer_depth=[0, 0, 1, 1, 2, 2],
    ),
}


def detected(unet_ldm: dict[str, torch.Tensor]) -> dict:
    """The values ComfyUI's `detect_unet_config` reads from UNet tensors (prefix stripped)."""
    res_blocks = sorted(
        {int(m.group(1)) for k in unet_ldm if (m := re.match(r"input_blocks\.(\d+)\.0\.in_layers\.0\.weight$", k))}
    )
    depths = [
        len({k.split(".")[4] for k in unet_ldm if k.startswith(f"input_blocks.{i}.1.transformer_blocks.")})
        for i in res_blocks
    ]
    first = min(i for i, d in zip(res_blocks, depths) if d)
    label = unet_ldm.get("label_emb.0.0.weight")
    return dict(
        model_channels=unet_ldm["input_blocks.0.0.weight"].shape[0],
        context_dim=unet_ldm[f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        adm_in_channels=None if label is None else label.shape[1],
        use_linear_in_transformer=unet_ldm[f"input_blocks.{first}.1.proj_in.weight"].ndim == 2,
        transformer_depth=depths,
    )


@pytest.mark.parametrize("family, build, layers_per_block", [("sd15", sd15_unet, 1), ("sdxl", vega_unet, 2)])
def test_unet_layout_is_one_comfyui_detects(family, build, layers_per_block):
    with torch.device("meta"):  # shapes only: no memory, no time
        unet = build()
    prefix = "model.diffusion_model."
    found = detected({k[len(prefix) :]: v for k, v in unet_to_ldm(unet.state_dict(), layers_per_block).items()})
    expected = COMFYUI_DETECTION[family]
    assert {k: found[k] for k in expected} == expected


@pytest.fixture
def tokenizer_dir(tmp_path):
    directory = tmp_path / "tokenizer"
    directory.mkdir()
    (directory / "vocab.json").write_text('{"a</w>": 0}')
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return directory


def test_writer_copies_the_tokenizer_and_writes_the_input_picture(tmp_path, tokenizer_dir):
    root = write_comfyui_models_dir(tmp_path / "root", tokenizer_dir, families=())
    for name in ("vocab.json", "merges.txt"):
        assert (root / "models" / "tokenizers" / "clip" / name).read_bytes() == (tokenizer_dir / name).read_bytes()
    for name in INPUT_IMAGES:
        assert Image.open(root / "input" / name).size == COMFYUI_INPUT_SIZE
    assert not (root / "models" / "checkpoints").exists() and not (root / "models" / "loras").exists()
    assert (root / "output").is_dir()


def test_writer_refuses_unknown_families_and_incomplete_tokenizers(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="sd3"):
        write_comfyui_models_dir(tmp_path / "a", tokenizer_dir, families=("sd15", "sd3"))
    (tokenizer_dir / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        write_comfyui_models_dir(tmp_path / "b", tokenizer_dir, families=("sd15",))
    assert not (tmp_path / "b" / "models" / "checkpoints").exists()
