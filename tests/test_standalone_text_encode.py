"""CLIPTextEncode / CLIPSetLastLayer on the standalone host against diffusers' own prompt
encoding (StableDiffusion(XL)Pipeline.encode_prompt) with the same weights and tokenizer,
plus ComfyUI's emphasis syntax and weighting rule."""

from __future__ import annotations

import pytest
import torch

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.prompt_weights import prompt_segments, tokenize_weighted

PROMPT = "a beautiful photo of a red cat in the city at night"


@pytest.fixture(scope="module")
def loaded():
    root = shared_models_root()
    return {f: load_checkpoint(root / "models" / "checkpoints" / f"tiny_{f}.safetensors") for f in ("sd15", "sdxl")}


def _encode(clip, text):
    (entry,) = NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, text)[0]
    return entry[0], entry[1]["pooled_output"]


def _sd15_pipeline(model, clip, vae):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae.vae,
        text_encoder=clip.text_encoders[0],
        tokenizer=clip.tokenizer,
        unet=model.unet,
        scheduler=EulerDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(foo)", [("foo", 1.1)]),
        ("((foo))", [("foo", pytest.approx(1.21))]),
        ("(foo:2.0) bar", [("foo", 2.0), (" bar", 1.0)]),
        ("((foo):1.1)", [("foo", pytest.approx(1.21))]),
        ("((foo:1.1))", [("foo", 1.1)]),
        ("x (a (b:0.5) c:2)", [("x ", 1.0), ("a ", 2.0), ("b", 0.5), (" c", 2.0)]),
        ("\\(literal\\) (w)", [("(literal) ", 1.0), ("w", 1.1)]),
        ("[not weighted]", [("[not weighted]", 1.0)]),  # ComfyUI has no [..] de-emphasis
        ("(time: 12:30)", [("time: 12", pytest.approx(30.0))]),
        ("(ratio:abc)", [("ratio:abc", pytest.approx(1.1))]),
    ],
)
def test_emphasis_syntax(text, expected):
    assert prompt_segments(text) == expected


def test_chunks_are_77_tokens_with_bos_eos(loaded):
    tokenizer = loaded["sd15"][1].tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    long_prompt = ", ".join(["a red cat"] * 30)  # 4 tokens per repeat, one segment
    chunks = tokenize_weighted(long_prompt + " (dog:1.2)", tokenizer, pad_token=eos)
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert all(c[0][0] == bos for c in chunks)
    ids = [t for c in chunks for t, _ in c]
    body = tokenizer(long_prompt)["input_ids"][1:-1]
    assert ids[1:76] == body[:75] and ids[76] == eos and ids[78 : 78 + len(body) - 75] == body[75:]
    weighted = [(t, w) for c in chunks for t, w in c if w != 1.0]
    assert weighted == [(tokenizer("dog")["input_ids"][1], 1.2)]
    # a short weighted group that does not fit moves whole to the next chunk
    filler = " ".join(["a"] * 74)  # "a" is one token
    moved = tokenize_weighted(filler + " (red dog:1.3)", tokenizer, pad_token=eos)
    assert [t for t, _ in moved[0][75:]] == [eos, eos] and moved[1][1][1] == 1.3


def test_sd15_unweighted_matches_diffusers(loaded):
    pipe = _sd15_pipeline(*loaded["sd15"])
    clip = loaded["sd15"][1]
    cond, _ = _encode(clip, PROMPT)
    reference, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    torch.testing.assert_close(cond, reference, rtol=0, atol=1e-5)

    skipped = NODE_CLASS_MAPPINGS["CLIPSetLastLayer"]().set_last_layer(clip, -2)[0]
    cond_skip, _ = _encode(skipped, PROMPT)
    # diffusers' clip_skip=1 path (hidden_states[-2], then the final layer norm), written out:
    # its own code reaches `text_encoder.text_model`, which transformers 5's CLIPTextModel lacks
    encoder = clip.text_encoders[0]
    ids = clip.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-2]
        reference_skip = encoder.final_layer_norm(hidden)
    torch.testing.assert_close(cond_skip, reference_skip, rtol=0, atol=1e-5)
    assert clip.layer_idx is None  # CLIPSetLastLayer works on a clone
    last, _ = _encode(NODE_CLASS_MAPPINGS["CLIPSetLastLayer"]().set_last_layer(clip, -1)[0], PROMPT)
    torch.testing.assert_close(last, cond, rtol=0, atol=1e-5)
    # deeper than the encoder (the widget allows -24; the tiny encoder has 3 layers): ComfyUI uses the last
    deep, _ = _encode(NODE_CLASS_MAPPINGS["CLIPSetLastLayer"]().set_last_layer(clip, -24)[0], PROMPT)
    torch.testing.assert_close(deep, cond, rtol=0, atol=1e-5)


def test_weighted_tokens_interpolate_from_the_empty_prompt(loaded):
    clip = loaded["sd15"][1]
    encoder, tokenizer = clip.text_encoders[0], clip.tokenizer
    cond, _ = _encode(clip, "a photo of a (cat:1.5) in the (city)")
    ids, weights = [tokenizer.bos_token_id], [1.0]
    for segment, weight in (("a photo of a ", 1.0), ("cat", 1.5), (" in the ", 1.0), ("city", 1.1)):
        pieces = tokenizer(segment)["input_ids"][1:-1]
        ids += pieces
        weights += [weight] * len(pieces)
    ids += [tokenizer.eos_token_id] * (77 - len(ids))
    empty = [tokenizer.bos_token_id] + [tokenizer.eos_token_id] * 76
    with torch.no_grad():
        z = encoder(torch.tensor([ids])).last_hidden_state[0]
        z_empty = encoder(torch.tensor([empty])).last_hidden_state[0]
    expected = z.clone()
    for position, weight in enumerate(weights):
        if weight != 1.0:
            expected[position] = z_empty[position] + (z[position] - z_empty[position]) * weight
    assert sum(w != 1.0 for w in weights) >= 2
    torch.testing.assert_close(cond[0], expected, rtol=0, atol=1e-5)


def test_sdxl_matches_diffusers_both_encoders_and_pooled(loaded):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    model, clip, vae = loaded["sdxl"]
    tokenizer_dir = shared_models_root() / "models" / "tokenizers" / "clip"
    # SDXL's second tokenizer pads with "!" (id 0), as ComfyUI's clip_g tokenizer does
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(tokenizer_dir), pad_token="!")
    assert tokenizer_2.pad_token_id == 0
    pipe = StableDiffusionXLPipeline(
        vae=vae.vae,
        text_encoder=clip.text_encoders[0],
        text_encoder_2=clip.text_encoders[1],
        tokenizer=clip.tokenizer,
        tokenizer_2=tokenizer_2,
        unet=model.unet,
        scheduler=EulerDiscreteScheduler(),
    )
    cond, pooled = _encode(clip, PROMPT)
    reference, _, reference_pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert cond.shape == (1, 77, 64 + 128)
    torch.testing.assert_close(cond, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, reference_pooled, rtol=0, atol=1e-5)


def test_clip_input_none_is_refused():
    with pytest.raises(RuntimeError, match="clip input is invalid"):
        NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(None, "x")
