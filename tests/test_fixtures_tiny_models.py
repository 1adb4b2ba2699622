"""The tiny fixtures: deterministic, real LDM key names, and a round trip through diffusers'
own single-file converters gives back exactly the modules they were made from."""

from __future__ import annotations

import pytest
import torch

from lcm_accel.fixtures import build_tiny_sd15, tiny_model, write_clip_tokenizer
from lcm_accel.fixtures.tiny_models import ldm_state_dict

# Names as they appear in real SD1.5 / SDXL single-file checkpoints.
SD15_REAL_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.middle_block.1.proj_in.weight",
    "model.diffusion_model.output_blocks.2.1.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.encoder.mid.attn_1.q.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    "first_stage_model.quant_conv.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
]
SDXL_REAL_KEYS = [
    "model.diffusion_model.label_emb.0.0.weight",
    "model.diffusion_model.input_blocks.4.1.proj_in.weight",
    "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn1.to_q.weight",
    "model.diffusion_model.output_blocks.2.2.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    "conditioner.embedders.1.model.text_projection",
    "conditioner.embedders.1.model.positional_embedding",
    "conditioner.embedders.1.model.ln_final.weight",
]


def test_build_is_deterministic_in_the_seed():
    a, b, c = build_tiny_sd15(3), build_tiny_sd15(3), build_tiny_sd15(4)
    state_a, state_b, state_c = (ldm_state_dict(m) for m in (a, b, c))
    assert state_a.keys() == state_b.keys() == state_c.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["model.diffusion_model.out.2.weight"], state_c["model.diffusion_model.out.2.weight"])


@pytest.mark.parametrize("family, expected", [("sd15", SD15_REAL_KEYS), ("sdxl", SDXL_REAL_KEYS)])
def test_checkpoint_uses_real_ldm_names_and_layouts(family, expected):
    state = ldm_state_dict(tiny_model(family))
    missing = [k for k in expected if k not in state]
    assert not missing
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as in real files
    proj_in = next(v for k, v in state.items() if k.endswith("input_blocks.4.1.proj_in.weight"))
    assert proj_in.ndim == (2 if family == "sdxl" else 4)  # SDXL: linear projections
    if family == "sdxl":
        model = tiny_model("sdxl")
        projection = state["conditioner.embedders.1.model.text_projection"]
        assert torch.equal(projection, model.text_encoders[1].text_projection.weight.T)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_diffusers_converters_give_back_the_original_modules(family):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    model = tiny_model(family)
    state = ldm_state_dict(model)

    def assert_same(converted, module, strip_text_model=False):
        reference = module.state_dict()
        if strip_text_model:
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        reference = {k: v for k, v in reference.items() if not k.endswith("position_ids")}
        assert converted.keys() == reference.keys()
        assert all(torch.equal(converted[k], reference[k]) for k in reference)

    assert_same(convert_ldm_unet_checkpoint(state, dict(model.unet.config)), model.unet)
    assert_same(convert_ldm_vae_checkpoint(state, dict(model.vae.config)), model.vae)
    prefix = "cond_stage_model.transformer." if family == "sd15" else "conditioner.embedders.0.transformer."
    clip_l = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(prefix)})
    assert_same(clip_l, model.text_encoders[0], strip_text_model=True)  # transformers 5 CLIPTextModel
    if family == "sdxl":
        clip_g = convert_open_clip_checkpoint(model.text_encoders[1], state, prefix="conditioner.embedders.1.model.")
        assert_same(clip_g, model.text_encoders[1])


def test_tokenizer_files_load_in_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    size = write_clip_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer) == size
    assert tokenizer.eos_token_id == size - 1 and tokenizer.bos_token_id == size - 2  # specials last, as in CLIP
    ids = tokenizer("A photo of a dog")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 2 + 5  # every listed word is one token
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a dog"
    assert tokenizer("zebra!")["input_ids"][1:-1]  # unknown words fall back to byte tokens
