"""HPSv2 and ImageReward rewards (`training/reward_models.py`) against reference forwards.

Tiny random checkpoints are written in the real files' layouts (open_clip's for HPSv2, ImageReward's
`ImageReward.pt` for ImageReward) and scored by the implementation; the expected scores come from
the plain-torch reference forwards below, written from the architecture descriptions (open_clip's
pre-norm ViT + causal text transformer; BLIP's pre-norm ViT + post-norm BERT with cross-attention
and ImageReward's linear MLP head). Weights are drawn large enough (attention logits of order one,
layer-norm gains 1 + noise) that wrong head splits, masks, activations or scales show up: a test
below checks that such mistakes in the reference itself would change the scores by far more than
the tolerance. Tokenisation is not under test: the references tokenise with transformers'
`CLIPTokenizer` / `BertTokenizer` on the same vocabulary files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_helpers import one_thread

from lcm_accel.fixtures.tokenizer import write_clip_tokenizer

reward_models = pytest.importorskip("lcm_accel.training.reward_models")

_one_thread = pytest.fixture(autouse=True)(one_thread)

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
IR_MEAN, IR_STD = 0.16717362830052426, 1.0333394966054072

IMG, PATCH = 32, 8
GRID = (IMG // PATCH) ** 2
CLIP_W, CLIP_WT, CLIP_E, CLIP_L, CLIP_CTX = 128, 128, 32, 2, 77  # 2 heads each (width // 64)
IR_DV, IR_DT, IR_L, IR_P, IR_E = 192, 128, 2, 40, 16  # 3 vision heads, 2 text heads
IR_MLP = (IR_DT, 32, 16, 8, 4, 1)  # Linear layers at 0, 2, 4, 6, 7

PROMPTS = [
    "a photo of a cat",
    "Beautiful watercolor painting of a red house at sunset",
    # long enough to be truncated by both tokenizers (77 CLIP tokens, 35 BERT tokens)
    " ".join(["big green tree in the forest with a small blue lake"] * 10),
]
BERT_WORDS = (
    "a an the of and with in on at photo painting cat dog house tree red green blue big small "
    "beautiful watercolor sunset forest lake sky city night"
).split()


# ----------------------------------------------------------------------------------------------
# shared plain-torch pieces
# ----------------------------------------------------------------------------------------------


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def _preprocess(images: torch.Tensor, size: int = IMG, fit: str = "crop") -> torch.Tensor:
    """The stated preprocessing (bicubic, antialias), then normalise. fit "crop" (ImageReward):
    shorter side -> size, centre crop; "pad" (HPSv2's scorer, open_clip's ResizeMaxSize on tensors):
    longer side -> size, centred on zeros (black). (ImageReward resizes 8-bit PIL images with PIL's
    bicubic, which differs slightly; see `test_imagereward_resizes_like_pil_roughly`.)"""
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / (min(h, w) if fit == "crop" else max(h, w))
        nh, nw = round(h * scale), round(w * scale)
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        if fit == "crop":
            top, left = (nh - size) // 2, (nw - size) // 2
            images = images[..., top : top + size, left : left + size]
        else:
            full = images.new_zeros(images.shape[0], 3, size, size)
            top, left = (size - nh) // 2, (size - nw) // 2
            full[..., top : top + nh, left : left + nw] = images
            images = full
    return _normalise(images)


def _attention(q, k, v, heads, bias=None):
    """q (B, N, D), k/v (B, M, D) -> (B, N, D); `bias` (broadcastable to B, heads, N, M) is added
    to the scaled logits (0 / -inf)."""
    b, n, d = q.shape
    m, hd = k.shape[1], d // heads
    q = q.view(b, n, heads, hd).transpose(1, 2)
    k = k.reshape(b, m, heads, hd).transpose(1, 2)
    v = v.reshape(b, m, heads, hd).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if bias is not None:
        logits = logits + bias
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _rand(g, *shape, std=1.0):
    return torch.randn(*shape, generator=g) * std


def _put_ln(sd, g, prefix, width):
    sd[prefix + ".weight"] = 1.0 + _rand(g, width, std=0.2)
    sd[prefix + ".bias"] = _rand(g, width, std=0.1)


def _put_linear(sd, g, prefix, out_f, in_f, std):
    sd[prefix + ".weight"] = _rand(g, out_f, in_f, std=std)
    sd[prefix + ".bias"] = _rand(g, out_f, std=0.05)


def _images(seed: int, count: int = 3, h: int = IMG, w: int = IMG) -> torch.Tensor:
    """Values in [0.2, 0.8]: bicubic overshoot then stays inside [0, 1], so the result does not
    depend on whether an implementation clamps after resizing."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(2, h // 4), max(2, w // 4), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return 0.2 + 0.6 * (0.5 * smooth + 0.5 * torch.rand(count, 3, h, w, generator=g))


def _assert_prompts_matter(scores):
    """scores (images, prompts): every two prompts give clearly different scores on some image."""
    for j in range(scores.shape[1]):
        for k in range(j + 1, scores.shape[1]):
            assert (scores[:, j] - scores[:, k]).abs().max() > 1e-2, (j, k, scores)


def _score_matrix(fn, images):
    """scores[i, j] = fn(image i, prompt j) for the 3 PROMPTS."""
    cols = [fn(images, [p] * images.shape[0]) for p in PROMPTS]
    return torch.stack([c.detach().float() for c in cols], dim=1)


# ----------------------------------------------------------------------------------------------
# HPSv2 (open_clip ViT layout)
# ----------------------------------------------------------------------------------------------


def _put_clip_block(sd, g, prefix, w):
    _put_ln(sd, g, prefix + "ln_1", w)
    sd[prefix + "attn.in_proj_weight"] = _rand(g, 3 * w, w, std=0.12)
    sd[prefix + "attn.in_proj_bias"] = _rand(g, 3 * w, std=0.05)
    _put_linear(sd, g, prefix + "attn.out_proj", w, w, 0.08)
    _put_ln(sd, g, prefix + "ln_2", w)
    _put_linear(sd, g, prefix + "mlp.c_fc", 4 * w, w, 0.1)
    _put_linear(sd, g, prefix + "mlp.c_proj", w, 4 * w, 0.05)


def make_hpsv2_state_dict(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    w = CLIP_W
    sd["visual.class_embedding"] = _rand(g, w, std=0.5)
    sd["visual.positional_embedding"] = _rand(g, 1 + GRID, w, std=0.3)
    sd["visual.conv1.weight"] = _rand(g, w, 3, PATCH, PATCH, std=0.05)
    _put_ln(sd, g, "visual.ln_pre", w)
    for i in range(CLIP_L):
        _put_clip_block(sd, g, f"visual.transformer.resblocks.{i}.", w)
    _put_ln(sd, g, "visual.ln_post", w)
    sd["visual.proj"] = _rand(g, w, CLIP_E, std=0.1)
    wt = CLIP_WT
    sd["token_embedding.weight"] = _rand(g, vocab_size, wt, std=0.5)
    sd["positional_embedding"] = _rand(g, CLIP_CTX, wt, std=0.3)
    for i in range(CLIP_L):
        _put_clip_block(sd, g, f"transformer.resblocks.{i}.", wt)
    _put_ln(sd, g, "ln_final", wt)
    sd["text_projection"] = _rand(g, wt, CLIP_E, std=0.1)
    sd["logit_scale"] = torch.tensor(math.log(100.0))
    sd["attn_mask"] = torch.full((CLIP_CTX, CLIP_CTX), float("-inf")).triu(1)  # open_clip's buffer
    return sd


def _clip_block(x, sd, prefix, heads, bias=None, act=F.gelu):
    h = _ln(x, sd, prefix + "ln_1", 1e-5)
    q, k, v = F.linear(h, sd[prefix + "attn.in_proj_weight"], sd[prefix + "attn.in_proj_bias"]).chunk(3, dim=-1)
    a = _attention(q, k, v, heads, bias)
    x = x + F.linear(a, sd[prefix + "attn.out_proj.weight"], sd[prefix + "attn.out_proj.bias"])
    h = _ln(x, sd, prefix + "ln_2", 1e-5)
    h = act(F.linear(h, sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"]))
    return x + F.linear(h, sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"])


def _clip_tokenize(tok_dir: Path, prompts):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    ids = torch.tensor(tok(list(prompts), padding="max_length", max_length=CLIP_CTX, truncation=True)["input_ids"])
    return ids, tok.convert_tokens_to_ids("<|endoftext|>")


@torch.no_grad()
def hpsv2_reference(sd, tok_dir, pixels, prompts, *, causal=True, act=F.gelu, heads=None, eot="first"):
    """open_clip ViT-H-14-style image/text towers; score = cosine(image feature, text feature).
    `pixels` are already normalised, at IMG x IMG. Keyword arguments exist to make deliberately
    wrong variants (for the sensitivity check)."""
    b = pixels.shape[0]
    vh = heads or CLIP_W // 64
    th = heads or CLIP_WT // 64
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].view(1, 1, -1).expand(b, 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre", 1e-5)
    for i in range(CLIP_L):
        x = _clip_block(x, sd, f"visual.transformer.resblocks.{i}.", vh, act=act)
    image = _ln(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]

    ids, eot_id = _clip_tokenize(tok_dir, prompts)
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = torch.full((CLIP_CTX, CLIP_CTX), float("-inf")).triu(1) if causal else None
    for i in range(CLIP_L):
        t = _clip_block(t, sd, f"transformer.resblocks.{i}.", th, bias=mask, act=act)
    t = _ln(t, sd, "ln_final", 1e-5)
    pos = (ids == eot_id).int().argmax(dim=1) if eot == "first" else torch.full((b,), CLIP_CTX - 1)
    text = t[torch.arange(b), pos] @ sd["text_projection"]
    return F.cosine_similarity(image, text, dim=-1)


# ----------------------------------------------------------------------------------------------
# ImageReward (BLIP ViT + BERT with cross-attention + MLP head)
# ----------------------------------------------------------------------------------------------


def write_bert_vocab(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return len(tokens)


def make_imagereward_state_dict(vocab_len: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    dv, dt = IR_DV, IR_DT
    v = "blip.visual_encoder."
    sd[v + "cls_token"] = _rand(g, 1, 1, dv, std=0.5)
    sd[v + "pos_embed"] = _rand(g, 1, 1 + GRID, dv, std=0.3)
    _put_linear(sd, g, v + "patch_embed.proj", dv, 3 * PATCH * PATCH, 0.05)
    sd[v + "patch_embed.proj.weight"] = sd[v + "patch_embed.proj.weight"].view(dv, 3, PATCH, PATCH)
    for i in range(IR_L):
        p = f"{v}blocks.{i}."
        _put_ln(sd, g, p + "norm1", dv)
        _put_linear(sd, g, p + "attn.qkv", 3 * dv, dv, 0.1)
        _put_linear(sd, g, p + "attn.proj", dv, dv, 0.06)
        _put_ln(sd, g, p + "norm2", dv)
        _put_linear(sd, g, p + "mlp.fc1", 4 * dv, dv, 0.08)
        _put_linear(sd, g, p + "mlp.fc2", dv, 4 * dv, 0.04)
    _put_ln(sd, g, v + "norm", dv)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = _rand(g, vocab_len + 2, dt, std=0.5)  # + [DEC], [ENC]
    sd[t + "embeddings.position_embeddings.weight"] = _rand(g, IR_P, dt, std=0.3)
    sd[t + "embeddings.position_ids"] = torch.arange(IR_P, dtype=torch.int64).unsqueeze(0)
    _put_ln(sd, g, t + "embeddings.LayerNorm", dt)
    for i in range(IR_L):
        p = f"{t}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            _put_linear(sd, g, p + f"attention.self.{name}", dt, dt, 0.12)
        _put_linear(sd, g, p + "attention.output.dense", dt, dt, 0.08)
        _put_ln(sd, g, p + "attention.output.LayerNorm", dt)
        _put_linear(sd, g, p + "crossattention.self.query", dt, dt, 0.12)
        _put_linear(sd, g, p + "crossattention.self.key", dt, dv, 0.1)
        _put_linear(sd, g, p + "crossattention.self.value", dt, dv, 0.1)
        _put_linear(sd, g, p + "crossattention.output.dense", dt, dt, 0.1)
        _put_ln(sd, g, p + "crossattention.output.LayerNorm", dt)
        _put_linear(sd, g, p + "intermediate.dense", 4 * dt, dt, 0.08)
        _put_linear(sd, g, p + "output.dense", dt, 4 * dt, 0.05)
        _put_ln(sd, g, p + "output.LayerNorm", dt)
    _put_linear(sd, g, "blip.vision_proj", IR_E, dv, 0.05)
    _put_linear(sd, g, "blip.text_proj", IR_E, dt, 0.05)
    for idx, (i_f, o_f) in zip((0, 2, 4, 6, 7), zip(IR_MLP[:-1], IR_MLP[1:])):
        _put_linear(sd, g, f"mlp.layers.{idx}", o_f, i_f, 0.8 / math.sqrt(i_f))
    return sd


def _linear(x, sd, prefix):
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _bert_tokenize(tok_dir: Path, prompts):
    from transformers import BertTokenizer

    tok = BertTokenizer(str(tok_dir / "vocab.txt"), do_lower_case=True)
    enc = tok(list(prompts), padding="max_length", max_length=35, truncation=True)
    return torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"])


@torch.no_grad()
def imagereward_reference(sd, tok_dir, pixels, prompts, *, padding_mask=True, cross=True, act=F.gelu, causal=False):
    """BLIP ViT (pre-norm, eps 1e-6, all tokens) -> BERT (post-norm, eps 1e-12) with cross-attention
    to the image tokens -> MLP on the [CLS] state -> (r - mean) / std."""
    b = pixels.shape[0]
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([sd[v + "cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + sd[v + "pos_embed"]
    vh = IR_DV // 64
    for i in range(IR_L):
        p = f"{v}blocks.{i}."
        h = _ln(x, sd, p + "norm1", 1e-6)
        qkv = _linear(h, sd, p + "attn.qkv").view(b, x.shape[1], 3, vh, IR_DV // vh)
        q, k, vv = (qkv[:, :, j].reshape(b, x.shape[1], IR_DV) for j in range(3))
        x = x + _linear(_attention(q, k, vv, vh), sd, p + "attn.proj")
        h = _ln(x, sd, p + "norm2", 1e-6)
        x = x + _linear(act(_linear(h, sd, p + "mlp.fc1")), sd, p + "mlp.fc2")
    image = _ln(x, sd, v + "norm", 1e-6)

    ids, attn = _bert_tokenize(tok_dir, prompts)
    n = ids.shape[1]
    h = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][:n]
    h = _ln(h, sd, t + "embeddings.LayerNorm", 1e-12)
    pad_bias = None
    if padding_mask:
        pad_bias = torch.zeros(b, 1, 1, n).masked_fill(attn[:, None, None, :] == 0, float("-inf"))
    if causal:
        pad_bias = (0 if pad_bias is None else pad_bias) + torch.full((n, n), float("-inf")).triu(1)
    th = IR_DT // 64
    for i in range(IR_L):
        p = f"{t}encoder.layer.{i}."
        s = p + "attention."
        a = _attention(
            _linear(h, sd, s + "self.query"),
            _linear(h, sd, s + "self.key"),
            _linear(h, sd, s + "self.value"),
            th,
            pad_bias,
        )
        a = _ln(h + _linear(a, sd, s + "output.dense"), sd, s + "output.LayerNorm", 1e-12)
        c = a
        if cross:
            s = p + "crossattention."
            ca = _attention(
                _linear(a, sd, s + "self.query"),
                _linear(image, sd, s + "self.key"),
                _linear(image, sd, s + "self.value"),
                th,
            )
            c = _ln(a + _linear(ca, sd, s + "output.dense"), sd, s + "output.LayerNorm", 1e-12)
        m = _linear(act(_linear(c, sd, p + "intermediate.dense")), sd, p + "output.dense")
        h = _ln(c + m, sd, p + "output.LayerNorm", 1e-12)
    r = h[:, 0]
    for idx in (0, 2, 4, 6, 7):  # dropouts (eval: identity) at 1, 3, 5; no activations
        r = _linear(r, sd, f"mlp.layers.{idx}")
    return (r.squeeze(-1) - IR_MEAN) / IR_STD


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


def _save(sd, path: Path, variant: str) -> Path:
    if variant == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    if variant == "wrapped":
        obj = {"state_dict": sd}
    elif variant == "wrapped_module":
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    elif variant == "bare":
        obj = sd
    else:
        raise AssertionError(variant)
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    tok = root / "tok"
    n = write_clip_tokenizer(tok)
    torch.manual_seed(0)
    sd = make_hpsv2_state_dict(n)
    model = _save(sd, root / "hpsv2.pt", "wrapped")
    return {"root": root, "tok": tok, "sd": sd, "file": model, "vocab": n}


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ir")
    tok = root / "tok"
    n = write_bert_vocab(tok)
    torch.manual_seed(1)
    sd = make_imagereward_state_dict(n)
    model = _save(sd, root / "ImageReward.pt", "bare")
    return {"root": root, "tok": tok, "sd": sd, "file": model, "vocab": n}


@pytest.fixture(scope="module")
def hps_reward(hps):
    return reward_models.load_hpsv2(str(hps["file"]), str(hps["tok"]))


@pytest.fixture(scope="module")
def ir_reward(ir):
    return reward_models.load_imagereward(str(ir["file"]), str(ir["tok"]))


def _parameters(reward):
    if isinstance(reward, torch.nn.Module):
        return list(reward.parameters())
    found = []
    for value in vars(reward).values():
        if isinstance(value, torch.nn.Module):
            found += list(value.parameters())
        elif isinstance(value, torch.Tensor):
            found.append(value)
    return found


# ----------------------------------------------------------------------------------------------
# 0. the references are sensitive to the mistakes the comparisons are meant to catch
# ----------------------------------------------------------------------------------------------


def test_references_are_sensitive(hps, ir):
    pixels = _normalise(_images(3))
    prompts = PROMPTS
    base = hpsv2_reference(hps["sd"], hps["tok"], pixels, prompts)
    for wrong in ({"causal": False}, {"act": lambda z: z * torch.sigmoid(1.702 * z)}, {"heads": 1}, {"eot": "last"}):
        other = hpsv2_reference(hps["sd"], hps["tok"], pixels, prompts, **wrong)
        assert (other - base).abs().max() > 1e-3, wrong
    base = imagereward_reference(ir["sd"], ir["tok"], pixels, prompts)
    for wrong in (
        {"padding_mask": False},
        {"causal": True},
        {"cross": False},
        {"act": lambda z: z * torch.sigmoid(1.702 * z)},
    ):
        other = imagereward_reference(ir["sd"], ir["tok"], pixels, prompts, **wrong)
        assert (other - base).abs().max() > 1e-3, wrong
    # scores for different images and prompts are spread out, not all alike
    assert base.std() > 1e-2


# ----------------------------------------------------------------------------------------------
# 1. HPSv2 scores match the reference (every accepted file form)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["wrapped", "wrapped_module", "bare", "safetensors"])
def test_hpsv2_matches_reference(hps, tmp_path, variant):
    model = _save(hps["sd"], tmp_path / "hps.pt", variant)
    reward = reward_models.load_hpsv2(str(model), str(hps["tok"]))
    assert isinstance(reward, reward_models.HPSv2Reward)
    assert reward.prompt_conditioned is True
    images = _images(10)
    got = _score_matrix(reward, images)
    want = torch.stack([hpsv2_reference(hps["sd"], hps["tok"], _normalise(images), [p] * 3) for p in PROMPTS], 1)
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    _assert_prompts_matter(got)
    # mixed prompts in one batch = the same pairs scored one by one
    mixed = reward(images, PROMPTS).detach()
    assert mixed.shape == (3,) and mixed.dtype.is_floating_point
    torch.testing.assert_close(mixed, got.diagonal(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# 2. HPSv2 on images larger than the model size, not square
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 60), (50, 40), (64, 64)])
def test_hpsv2_resizes_the_longer_side_and_pads(hps, hps_reward, size):
    images = _images(20, h=size[0], w=size[1])
    got = hps_reward(images, PROMPTS).detach()
    want = hpsv2_reference(hps["sd"], hps["tok"], _preprocess(images, fit="pad"), PROMPTS)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # a naive squash to 32x32 or a centre crop are different answers, so the padding is tested
    if size[0] != size[1]:
        squashed = F.interpolate(images, size=(IMG, IMG), mode="bicubic", antialias=True, align_corners=False)
        assert (hpsv2_reference(hps["sd"], hps["tok"], _normalise(squashed), PROMPTS) - want).abs().max() > 1e-3
        assert (hpsv2_reference(hps["sd"], hps["tok"], _preprocess(images), PROMPTS) - want).abs().max() > 1e-3


def test_imagereward_resizes_like_pil_roughly(ir, ir_reward):
    """ImageReward's scorer resizes 8-bit PIL images (bicubic); the stated preprocessing is torch's
    antialiased bicubic on float images, which agrees closely but not exactly."""
    from PIL import Image

    images = _images(30, h=40, w=60)
    crops = []
    for img in images:
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(arr).resize((48, 32), Image.BICUBIC)
        arr = np.asarray(pil).astype(np.float32) / 255
        crops.append(torch.from_numpy(arr).permute(2, 0, 1)[:, :, 8:40])
    want = imagereward_reference(ir["sd"], ir["tok"], _normalise(torch.stack(crops)), PROMPTS)
    got = ir_reward(images, PROMPTS).detach()
    torch.testing.assert_close(got, want, atol=0.02, rtol=0)  # observed gap ~7e-3


# ----------------------------------------------------------------------------------------------
# 3. ImageReward scores match the reference
# ----------------------------------------------------------------------------------------------


def test_imagereward_matches_reference(ir, ir_reward):
    assert isinstance(ir_reward, reward_models.ImageRewardModel)
    assert ir_reward.prompt_conditioned is True
    images = _images(40)
    got = _score_matrix(ir_reward, images)
    want = torch.stack([imagereward_reference(ir["sd"], ir["tok"], _normalise(images), [p] * 3) for p in PROMPTS], 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    _assert_prompts_matter(got)
    mixed = ir_reward(images, PROMPTS).detach()
    assert mixed.shape == (3,) and mixed.dtype.is_floating_point
    torch.testing.assert_close(mixed, got.diagonal(), atol=1e-5, rtol=0)
    # eval mode: the MLP's dropouts are off, so scoring is repeatable
    torch.testing.assert_close(ir_reward(images, PROMPTS).detach(), mixed, atol=0, rtol=0)


def test_imagereward_resizes_and_centre_crops(ir, ir_reward):
    images = _images(41, h=40, w=60)
    got = ir_reward(images, PROMPTS).detach()
    want = imagereward_reference(ir["sd"], ir["tok"], _preprocess(images), PROMPTS)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# 4. gradients reach the images, not the reward's weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hps", "ir"])
@pytest.mark.parametrize("size", [(IMG, IMG), (40, 60)])
def test_gradients_flow_to_images_only(request, which, size):
    reward = request.getfixturevalue("hps_reward" if which == "hps" else "ir_reward")
    params = _parameters(reward)
    assert params, "the reward holds its weights"
    assert not any(p.requires_grad for p in params)
    images = _images(50, count=2, h=size[0], w=size[1]).requires_grad_(True)
    scores = reward(images, PROMPTS[:2])
    assert scores.shape == (2,) and scores.requires_grad
    scores.sum().backward()
    assert images.grad is not None
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in params)


# ----------------------------------------------------------------------------------------------
# 5. errors
# ----------------------------------------------------------------------------------------------


def test_missing_files(hps, ir, tmp_path):
    missing = tmp_path / "no_such_weights.pt"
    with pytest.raises(FileNotFoundError, match="no_such_weights"):
        reward_models.load_hpsv2(str(missing), str(hps["tok"]))
    with pytest.raises(FileNotFoundError, match="no_such_weights"):
        reward_models.load_imagereward(str(missing), str(ir["tok"]))

    with pytest.raises(FileNotFoundError, match="vocab.json"):
        reward_models.load_hpsv2(str(hps["file"]), str(tmp_path / "no_such_dir"))
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        reward_models.load_imagereward(str(ir["file"]), str(tmp_path / "no_such_dir"))

    only_merges = tmp_path / "only_merges"
    only_merges.mkdir()
    (only_merges / "merges.txt").write_bytes((hps["tok"] / "merges.txt").read_bytes())
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        reward_models.load_hpsv2(str(hps["file"]), str(only_merges))
    only_vocab = tmp_path / "only_vocab"
    only_vocab.mkdir()
    (only_vocab / "vocab.json").write_bytes((hps["tok"] / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        reward_models.load_hpsv2(str(hps["file"]), str(only_vocab))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        reward_models.load_imagereward(str(ir["file"]), str(empty))


def test_wrong_kind_of_checkpoint(hps, ir, tmp_path):
    with pytest.raises(ValueError, match="(?i)hpsv2"):
        reward_models.load_hpsv2(str(ir["file"]), str(hps["tok"]))
    with pytest.raises(ValueError, match="(?i)imagereward"):
        reward_models.load_imagereward(str(hps["file"]), str(ir["tok"]))
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3), "bias": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="(?i)hpsv2"):
        reward_models.load_hpsv2(str(other), str(hps["tok"]))
    with pytest.raises(ValueError, match="(?i)imagereward"):
        reward_models.load_imagereward(str(other), str(ir["tok"]))


def test_unknown_leftover_keys(hps, ir, tmp_path):
    sd = dict(hps["sd"])
    sd["visual.bogus_extra_key"] = torch.zeros(4)
    path = _save(sd, tmp_path / "hps_extra.pt", "wrapped")
    with pytest.raises(ValueError, match="bogus_extra_key"):
        reward_models.load_hpsv2(str(path), str(hps["tok"]))
    sd = dict(ir["sd"])
    sd["blip.text_encoder.bogus_extra_key"] = torch.zeros(4)
    path = _save(sd, tmp_path / "ir_extra.pt", "bare")
    with pytest.raises(ValueError, match="bogus_extra_key"):
        reward_models.load_imagereward(str(path), str(ir["tok"]))


def test_truncated_checkpoint_is_refused(hps, ir, tmp_path):
    """A checkpoint that lacks a needed weight must not load with random/zero weights silently."""
    sd = {k: v for k, v in hps["sd"].items() if k != "visual.proj"}
    path = _save(sd, tmp_path / "hps_short.pt", "wrapped")
    with pytest.raises((ValueError, KeyError, RuntimeError)):
        reward_models.load_hpsv2(str(path), str(hps["tok"]))
    sd = {k: v for k, v in ir["sd"].items() if k != "mlp.layers.7.weight"}
    path = _save(sd, tmp_path / "ir_short.pt", "bare")
    with pytest.raises((ValueError, KeyError, RuntimeError)):
        reward_models.load_imagereward(str(path), str(ir["tok"]))


# ----------------------------------------------------------------------------------------------
# 6. the registry
# ----------------------------------------------------------------------------------------------


def test_registry_round_trip(hps, ir, hps_reward, ir_reward):
    from lcm_accel.training.rewards import load_reward

    images = _images(60)
    r = load_reward("hpsv2", str(hps["file"]), str(hps["tok"]))
    assert isinstance(r, reward_models.HPSv2Reward) and r.prompt_conditioned is True
    torch.testing.assert_close(r(images, PROMPTS).detach(), hps_reward(images, PROMPTS).detach(), atol=1e-6, rtol=0)
    r = load_reward("imagereward", str(ir["file"]), str(ir["tok"]))
    assert isinstance(r, reward_models.ImageRewardModel) and r.prompt_conditioned is True
    torch.testing.assert_close(r(images, PROMPTS).detach(), ir_reward(images, PROMPTS).detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["hpsv2", "imagereward"])
def test_registry_tokenizer_defaults_to_the_model_folder(hps, ir, tmp_path, name):
    from lcm_accel.training.rewards import load_reward

    src = hps if name == "hpsv2" else ir
    cls = reward_models.HPSv2Reward if name == "hpsv2" else reward_models.ImageRewardModel
    files = ("vocab.json", "merges.txt") if name == "hpsv2" else ("vocab.txt",)

    bare = tmp_path / "bare"
    bare.mkdir()
    lone = bare / src["file"].name
    lone.write_bytes(src["file"].read_bytes())
    with pytest.raises(ValueError, match="--reward-tokenizer"):
        load_reward(name, str(lone))

    beside = tmp_path / "beside"
    beside.mkdir()
    model = beside / src["file"].name
    model.write_bytes(src["file"].read_bytes())
    for f in files:
        (beside / f).write_bytes((src["tok"] / f).read_bytes())
    r = load_reward(name, str(model))
    assert isinstance(r, cls)
    images = _images(70)
    want = (hpsv2_reference if name == "hpsv2" else imagereward_reference)(
        src["sd"], src["tok"], _normalise(images), PROMPTS
    )
    torch.testing.assert_close(r(images, PROMPTS).detach(), want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# 7. the trainer's CLI with a model-backed reward, end to end on the tiny SD1.5 checkpoint
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,proxy", [("hpsv2", False), ("imagereward", True)])
def test_train_cli_with_a_model_backed_reward(hps, ir, tmp_path, capsys, name, proxy):
    import json

    from PIL import Image

    from lcm_accel.cli import main
    from lcm_accel.fixtures import shared_models_root

    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    data = tmp_path / "data"
    data.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} house")
    files = hps if name == "hpsv2" else ir
    base = shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors"
    out = tmp_path / "lcm.safetensors"
    args = [
        "train",
        "lcm-lora",
        "--base",
        str(base),
        "--data",
        str(data),
        "--out",
        str(out),
        "--rank",
        "2",
        "--steps",
        "2",
        "--batch",
        "2",
        "--resolution",
        "64",
        "--w",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--reward",
        name,
        "--reward-model",
        str(files["file"]),
        "--reward-tokenizer",
        str(files["tok"]),
        "--reward-scale",
        "0.1",
    ] + (["--latent-proxy"] if proxy else [])
    assert main(args) == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "lcm.safetensors.work" / "loss.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(entry["reward"]) for entry in log)
    assert ("proxy_mse" in log[0]) == proxy
    # a model-backed reward without its weights is a clear error, not a crash
    bad = args[: args.index("--reward-model")] + ["--reward-scale", "0.1", "--out", str(tmp_path / "o2.safetensors")]
    assert main(bad) == 2 and "--reward-model" in capsys.readouterr().err
