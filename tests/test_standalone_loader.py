"""CheckpointLoaderSimple / DiffusersLoader on the standalone host: tiny checkpoints saved in
the real LDM layout load back into exactly the diffusers/transformers modules they came from."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from lcm_accel.fixtures import shared_models_root, tiny_model
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS
from lcm_accel.runtime.checkpoint_config import CheckpointFormatError
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

CONFIG_FIELDS = (
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "transformer_layers_per_block",
    "use_linear_projection",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "down_block_types",
    "up_block_types",
    "reverse_transformer_layers_per_block",
    "mid_block_type",
)


@pytest.fixture(scope="module")
def root():
    return shared_models_root()


def _same_weights(module, reference):
    got = {k.removeprefix("text_model."): v for k, v in module.state_dict().items()}
    want = {k.removeprefix("text_model."): v for k, v in reference.state_dict().items()}
    assert got.keys() == want.keys()
    return all(torch.equal(got[k], want[k]) for k in want)


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("family", ["sd15", "sdxl", "ssd1b"])
def test_single_file_round_trip(root, family):
    """SSD-1B loads as the "sdxl" family (same text encoders, VAE and conditioning) with its own
    UNet layout: other transformer depths on the way up, a middle block of one ResBlock."""
    reference = tiny_model(family)
    with use_model_paths(ModelPaths(root / "models")):
        assert (
            f"tiny_{family}.safetensors"
            in NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"].INPUT_TYPES()["required"]["ckpt_name"][0]
        )
        model, clip, vae = NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(f"tiny_{family}.safetensors")
    assert model.family == clip.family == vae.family == {"ssd1b": "sdxl"}.get(family, family)
    for field in CONFIG_FIELDS:
        assert _listify(model.unet.config.get(field)) == _listify(reference.unet.config.get(field)), field
    assert _same_weights(model.unet, reference.unet)
    assert _same_weights(vae.vae, reference.vae)
    assert vae.scaling_factor == reference.vae.config.scaling_factor
    assert len(clip.text_encoders) == len(reference.text_encoders)
    for loaded, ref in zip(clip.text_encoders, reference.text_encoders):
        assert type(loaded) is type(ref)
        assert loaded.config.hidden_act == ref.config.hidden_act
        assert loaded.config.num_attention_heads == ref.config.num_attention_heads
        assert _same_weights(loaded, ref)


def test_second_load_is_cached_and_clones_are_independent(root):
    path = root / "models" / "checkpoints" / "tiny_sd15.safetensors"
    model_a, clip_a, vae_a = load_checkpoint(path)
    model_b, clip_b, vae_b = load_checkpoint(path)
    assert model_a.unet is model_b.unet and clip_a.text_encoders[0] is clip_b.text_encoders[0] and vae_a is vae_b
    model_a.model_options["sampling"] = "lcm"
    clip_a.layer_idx = -2
    assert "sampling" not in model_b.model_options and clip_b.layer_idx is None
    clone = model_a.clone()
    clone.model_options["sampling"] = "x0"
    assert model_a.model_options["sampling"] == "lcm" and clone.unet is model_a.unet


def test_changed_file_is_reloaded(tmp_path, root):
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    path = models / "checkpoints" / "tiny_sd15.safetensors"
    first = load_checkpoint(path)[0].unet
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_checkpoint(path)[0].unet is not first


def _user_checkpoint(tmp_path, clip_vocab: bool, name: str = "mine.safetensors"):
    """A tiny SD1.5 single file in `tmp_path/models/checkpoints/` with no tokenizer beside it."""
    from lcm_accel.fixtures.tiny_models import save_ldm_checkpoint

    return save_ldm_checkpoint(tiny_model("sd15", clip_vocab=clip_vocab), tmp_path / "models" / "checkpoints" / name)


def test_single_file_without_tokenizer_uses_the_packaged_one(tmp_path):
    """No tokenizers/ folder: CLIP's tokenizer shipped with the pack, no error, same weights."""
    from lcm_accel.runtime.clip_tokenizer import packaged_clip_tokenizer

    path = _user_checkpoint(tmp_path, clip_vocab=True)
    model, clip, vae = load_checkpoint(path)
    assert clip.tokenizer is packaged_clip_tokenizer() and len(clip.tokenizer) == 49408
    reference = tiny_model("sd15", clip_vocab=True)
    assert _same_weights(clip.text_encoders[0], reference.text_encoders[0])
    assert _same_weights(model.unet, reference.unet) and _same_weights(vae.vae, reference.vae)


def test_tokenizer_folders_come_before_the_packaged_one(tmp_path, root):
    """Order: tokenizers/<checkpoint stem>/, then tokenizers/clip/, then the packaged tokenizer."""
    from lcm_accel.runtime.clip_tokenizer import packaged_merges, write_tokenizer_files

    path = _user_checkpoint(tmp_path, clip_vocab=False)  # the fixture tokenizer's vocabulary
    tokenizers = tmp_path / "models" / "tokenizers"
    write_tokenizer_files(tokenizers / "clip", packaged_merges())  # CLIP's: the wrong size here
    shutil.copytree(root / "models" / "tokenizers" / "clip", tokenizers / "mine")
    _, clip, _ = load_checkpoint(path)
    assert len(clip.tokenizer) == tiny_model("sd15").text_encoders[0].config.vocab_size
    shutil.rmtree(tokenizers / "mine")
    shutil.rmtree(tokenizers / "clip")
    shutil.copytree(root / "models" / "tokenizers" / "clip", tokenizers / "clip")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a fresh load, not the cached one
    _, clip, _ = load_checkpoint(path)
    assert len(clip.tokenizer) == tiny_model("sd15").text_encoders[0].config.vocab_size


def test_vocabulary_mismatch_names_the_file_and_the_folder(tmp_path):
    """A text encoder whose vocabulary is not CLIP's and no tokenizer folder: a clear error."""
    path = _user_checkpoint(tmp_path, clip_vocab=False)
    with pytest.raises(CheckpointFormatError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "mine.safetensors" in message and "49408" in message and "shipped with the pack" in message
    assert str(tmp_path / "models" / "tokenizers" / "mine") in message


def test_new_user_runs_the_txt2img_workflow_headless(tmp_path):
    """A models folder holding only a single-file SD1.5 checkpoint and the LCM-LoRA (no tokenizers/)
    runs `python -m lcm_accel run example_workflows/lcm_lora_txt2img.json --models DIR`."""
    import subprocess
    import sys
    from pathlib import Path

    from lcm_accel.fixtures.demo_models import write_new_user_models_dir

    models = write_new_user_models_dir(tmp_path) / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoints", "loras"]
    workflow = Path(__file__).resolve().parent.parent / "example_workflows" / "lcm_lora_txt2img.json"
    command = [
        sys.executable,
        "-m",
        "lcm_accel",
        "run",
        str(workflow),
        "--models",
        str(models),
        "--out",
        str(tmp_path / "out"),
        "--set",
        "5.width=64",
        "--set",
        "5.height=64",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_not_a_checkpoint_is_refused_with_the_file_name(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "checkpoints").mkdir()
    lora = tmp_path / "checkpoints" / "a_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(CheckpointFormatError, match="a_lora.safetensors.*model.diffusion_model"):
        load_checkpoint(lora)
    broken = tmp_path / "checkpoints" / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointFormatError, match="broken.safetensors"):
        load_checkpoint(broken)


def test_diffusers_folder_loads_through_diffusers_loader(tmp_path, root):
    reference = tiny_model("sd15")
    folder = tmp_path / "models" / "diffusers" / "tiny_sd15"
    reference.unet.save_pretrained(folder / "unet")
    reference.vae.save_pretrained(folder / "vae")
    reference.text_encoders[0].save_pretrained(folder / "text_encoder")
    shutil.copytree(root / "models" / "tokenizers" / "clip", folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {"beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "v_prediction"}
        )
    )
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with use_model_paths(ModelPaths(tmp_path / "models")):
        names = NODE_CLASS_MAPPINGS["DiffusersLoader"].INPUT_TYPES()["required"]["model_path"][0]
        assert names == ["tiny_sd15"]
        model, clip, vae = NODE_CLASS_MAPPINGS["DiffusersLoader"]().load_checkpoint("tiny_sd15")
    assert _same_weights(model.unet, reference.unet) and _same_weights(vae.vae, reference.vae)
    assert _same_weights(clip.text_encoders[0], reference.text_encoders[0])
    assert model.prediction_type == "v_prediction" and model.sampling_type == "v_prediction"
    assert model.noise_schedule["beta_schedule"] == "linear" and model.noise_schedule["beta_end"] == 0.02


def test_diffusers_folder_without_tokenizer_uses_the_packaged_one(tmp_path):
    from lcm_accel.runtime.clip_tokenizer import packaged_clip_tokenizer

    reference = tiny_model("sd15", clip_vocab=True)
    folder = tmp_path / "tiny_sd15"
    reference.unet.save_pretrained(folder / "unet")
    reference.vae.save_pretrained(folder / "vae")
    reference.text_encoders[0].save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    model, clip, vae = load_checkpoint(folder)
    assert clip.tokenizer is packaged_clip_tokenizer()
    assert _same_weights(clip.text_encoders[0], reference.text_encoders[0])
