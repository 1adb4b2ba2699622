"""The CLIP tokenizer the pack ships: its ids are CLIP's, it builds offline, and SDXL's second
encoder pads with token 0 as diffusers' and ComfyUI's SDXL tokenizers do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lcm_accel.runtime import clip_tokenizer
from lcm_accel.runtime.clip_tokenizer import packaged_clip_tokenizer

# Published ids of OpenAI's CLIP tokenizer (openai/clip-vit-*), as several independent projects'
# tests assert them: start 49406, end 49407, "a</w>" 320, "photo</w>" 1125, "of</w>" 539, ...
PUBLISHED = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "A PHOTO of  a Cat!": [49406, 320, 1125, 539, 320, 2368, 256, 49407],
    "Hello, world!": [49406, 3306, 267, 1002, 256, 49407],
    "car": [49406, 1615, 49407],
    "beach": [49406, 2117, 49407],
    "sunset": [49406, 3424, 49407],
    "": [49406, 49407],
}


@pytest.fixture(scope="module")
def tokenizer():
    return packaged_clip_tokenizer()


def test_vocabulary_and_special_tokens_are_clips(tokenizer):
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert tokenizer.model_max_length == 77
    assert tokenizer.convert_ids_to_tokens([0, 320, 49406, 49407]) == ["!", "a</w>", "<|startoftext|>", "<|endoftext|>"]
    merges = clip_tokenizer.packaged_merges()
    assert len(merges) == 49408 - 512 - 2 and merges[0] == "i n"


@pytest.mark.parametrize("text", sorted(PUBLISHED))
def test_ids_equal_the_published_clip_ids(tokenizer, text):
    assert tokenizer(text).input_ids == PUBLISHED[text]


def test_files_route_gives_the_same_tokenizer(tokenizer):
    """transformers 4 reads tokenizers from files only; that route must give the same ids."""
    from_files = clip_tokenizer._tokenizer_from_files(clip_tokenizer.packaged_merges())
    texts = [*PUBLISHED, "(masterpiece:1.2), best quality, café 東京", "don't stop 42 times " * 20]
    for text in texts:
        assert from_files(text).input_ids == tokenizer(text).input_ids, text


def test_equals_comfyui_tokenizer_files():
    """ComfyUI ships CLIP's vocab.json + merges.txt (comfy/sd1_tokenizer): ours are the same."""
    root = os.environ.get("COMFYUI_PATH")
    folder = Path(root) / "comfy" / "sd1_tokenizer" if root else None
    if folder is None or not (folder / "vocab.json").is_file():
        pytest.skip("COMFYUI_PATH not set (or without comfy/sd1_tokenizer)")
    merges = clip_tokenizer.packaged_merges()
    assert clip_tokenizer.clip_vocab(merges) == json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    theirs = [
        line
        for line in (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        if line and not line.startswith("#version")
    ]
    assert merges == theirs


def test_unreadable_merges_file_names_it(tmp_path):
    broken = tmp_path / "merges.txt.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(RuntimeError, match="merges.txt.gz"):
        clip_tokenizer.packaged_merges(broken)


def _encoder_inputs(clip, text: str) -> list[list[int]]:
    """The token ids each text encoder of `clip` receives for `text` (first chunk)."""
    from lcm_accel.runtime.text_encoding import encode_prompt

    seen: list[list[int]] = []

    def record(module, args, kwargs):
        seen.append(kwargs["input_ids"][0].tolist())

    hooks = [encoder.register_forward_pre_hook(record, with_kwargs=True) for encoder in clip.text_encoders]
    try:
        encode_prompt(clip, text)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_sdxl_encoders_pad_as_diffusers_and_comfyui(tmp_path):
    """CLIP-L pads with the end token (49407); SDXL's OpenCLIP-G with token 0, "!" (diffusers'
    SDXL `tokenizer_2` has pad_token "!", ComfyUI's SDXL clip_g tokenizer pads with 0)."""
    from lcm_accel.fixtures.tiny_models import write_tiny_models_dir
    from lcm_accel.runtime.checkpoints import load_checkpoint

    paths = write_tiny_models_dir(tmp_path, families=("sdxl",), packaged_tokenizer=True)
    assert "tokenizer" not in paths and not (tmp_path / "models" / "tokenizers").exists()
    _, clip, _ = load_checkpoint(paths["sdxl"])
    assert clip.tokenizer is packaged_clip_tokenizer()
    ids_l, ids_g = _encoder_inputs(clip, "a photo of a cat")
    words = PUBLISHED["a photo of a cat"]
    assert len(ids_l) == len(ids_g) == 77
    assert ids_l == words + [49407] * (77 - len(words))
    assert ids_g == words + [0] * (77 - len(words))
    assert clip.tokenizer.convert_ids_to_tokens(0) == "!"


def test_sd15_pads_with_the_end_token(tmp_path):
    from lcm_accel.fixtures.tiny_models import write_tiny_models_dir
    from lcm_accel.runtime.checkpoints import load_checkpoint

    paths = write_tiny_models_dir(tmp_path, families=("sd15",), packaged_tokenizer=True)
    _, clip, _ = load_checkpoint(paths["sd15"])
    (ids,) = _encoder_inputs(clip, "a photo of a dog")
    words = PUBLISHED["a photo of a dog"]
    assert ids == words + [49407] * (77 - len(words))
    with torch.no_grad():
        assert torch.isfinite(clip.text_encoders[0](input_ids=torch.tensor([ids])).last_hidden_state).all()
