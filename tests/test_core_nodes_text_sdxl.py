"""CLIPTextEncodeSDXL and CLIPTextEncodeSDXLRefiner on the standalone host (tiny SDXL): one prompt
per encoder, the shorter side padded with empty-prompt chunks as ComfyUI pads it, the size /
crop / aesthetic entries, and the sampler reading them as SDXL's added time ids."""

from __future__ import annotations

import pytest
import torch

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.text_encoding import FAMILY_RULES, encode_weighted

LONG = "a tabby cat sitting on a red chair " * 6  # more than one 77-token chunk with the tiny vocabulary


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def sdxl():
    return load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sdxl.safetensors")


def _encode_sdxl(clip, text_g, text_l, **sizes):
    values = dict(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    values.update(sizes)
    return NODES["CLIPTextEncodeSDXL"]().encode(clip, text_g=text_g, text_l=text_l, **values)[0]


def test_one_prompt_for_both_equals_clip_text_encode(sdxl):
    clip = sdxl[1]
    ((cond, options),) = _encode_sdxl(clip, "a cat", "a cat", width=832, crop_h=16)
    ((plain, plain_options),) = NODES["CLIPTextEncode"]().encode(clip, "a cat")[0]
    assert torch.equal(cond, plain) and torch.equal(options["pooled_output"], plain_options["pooled_output"])
    assert (options["width"], options["height"], options["crop_h"], options["target_width"]) == (832, 1024, 16, 1024)


def test_each_encoder_gets_its_prompt_and_the_shorter_is_padded(sdxl):
    clip = sdxl[1]
    encoder_l, encoder_g = clip.text_encoders
    rule_l, rule_g = FAMILY_RULES["sdxl"]
    ((cond, options),) = _encode_sdxl(clip, "a dog", LONG)
    z_l, _ = encode_weighted(encoder_l, clip.tokenizer, LONG, rule_l, None)
    z_g, pooled_g = encode_weighted(encoder_g, clip.tokenizer, "a dog", rule_g, None)
    empty_g, _ = encode_weighted(encoder_g, clip.tokenizer, "", rule_g, None)
    width_l = z_l.shape[-1]
    chunks = z_l.shape[1] // 77
    assert chunks > 1 and cond.shape[1] == z_l.shape[1]
    assert torch.equal(cond[..., :width_l], z_l)
    assert torch.equal(cond[:, :77, width_l:], z_g)
    assert torch.equal(cond[:, 77:, width_l:], empty_g.repeat(1, chunks - 1, 1))
    assert torch.equal(options["pooled_output"], pooled_g)  # the pooled output is text_g's
    ((swapped, _),) = _encode_sdxl(clip, LONG, "a dog")  # now CLIP-L is the padded side
    empty_l, _ = encode_weighted(encoder_l, clip.tokenizer, "", rule_l, None)
    assert swapped.shape[1] == chunks * 77
    assert torch.equal(swapped[:, 77:, :width_l], empty_l.repeat(1, chunks - 1, 1))


def test_the_sampler_reads_the_size_conditioning(sdxl):
    model, clip, _ = sdxl
    latent = NODES["EmptyLatentImage"]().generate(64, 64, 1)[0]
    plain = NODES["CLIPTextEncode"]().encode(clip, "a cat")[0]

    def run(positive):
        return NODES["KSampler"]().sample(model, 2, 2, 1.0, "euler", "normal", positive, positive, latent)[0]["samples"]

    # ComfyUI's defaults for a plain entry are the latent's own pixel size, no crop, same target
    same = _encode_sdxl(clip, "a cat", "a cat", width=64, height=64, target_width=64, target_height=64)
    assert torch.equal(run(same), run(plain))
    assert not torch.allclose(run(_encode_sdxl(clip, "a cat", "a cat", crop_w=256)), run(plain))
    refiner = NODES["CLIPTextEncodeSDXLRefiner"]().encode(clip, 2.5, 64, 64, "a cat")[0]
    assert refiner[0][1]["aesthetic_score"] == 2.5 and torch.equal(refiner[0][0], plain[0][0])
    assert torch.equal(run(refiner), run(plain))  # a base UNet has no aesthetic-score input


def test_a_clip_that_is_not_sdxls_is_refused():
    clip = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors")[1]
    with pytest.raises(ValueError, match="CLIPTextEncodeSDXL: clip is a sd15 CLIP"):
        _encode_sdxl(clip, "a", "b")
    with pytest.raises(ValueError, match="CLIPTextEncodeSDXLRefiner: clip input is invalid"):
        NODES["CLIPTextEncodeSDXLRefiner"]().encode(None, 6.0, 1024, 1024, "a")
