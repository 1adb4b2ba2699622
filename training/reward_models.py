"""Prompt-aware reward models loaded from the user's own files: HPSv2 and ImageReward.

Both score an image against its prompt and are differentiable in the image, so RG-LCD can
push the student towards higher human-preference scores. The networks are built from
transformers' CLIP and BLIP classes and filled from the checkpoints as their authors publish
them (nothing is downloaded; the original packages are not needed):

- HPSv2 (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`): an OpenCLIP ViT-H-14 fine-tuned on
  human preferences, saved in open_clip's layout. Score = cosine(image embedding, prompt
  embedding), as `hpsv2.score` computes it. Tokenizer: the CLIP BPE files `vocab.json` +
  `merges.txt` (the same ones SD1.5's text encoder uses).
- ImageReward (`ImageReward.pt`): BLIP's ViT-L image encoder and a BERT text encoder that
  cross-attends to the image, with an MLP head on the [CLS] feature, normalised by the
  published mean and std. Tokenizer: bert-base-uncased's `vocab.txt`.

Images are (batch, 3, H, W) in [0, 1], fitted into the model's input square as each package's
scorer does (HPSv2: longer side resized, padded with black; ImageReward: shorter side resized,
centre-cropped; bicubic, antialiased) and normalised with CLIP's mean and std. SD samples are
square, where both are one resize. ImageReward's scorer resizes 8-bit PIL images, so where a
resize happens its scores differ slightly from ours (8-bit rounding; ours stay differentiable).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip's vision head width where it is not 64 (ViT-H-14, ViT-g-14, ViT-bigG-14).
_OPEN_CLIP_VISION_HEAD_WIDTH = {1280: 80, 1408: 88, 1664: 104}
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_MAX_TOKENS = 35


def preprocess_images(images: torch.Tensor, size: int, fit: str = "crop") -> torch.Tensor:
    """Fit images into a `size` square (bicubic, antialiased) and CLIP-normalise them.
    fit "crop": shorter side to `size`, centre crop (ImageReward, CLIP); "pad": longer side to
    `size`, centred on black (HPSv2's scorer)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"reward images must be (batch, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    side = min(height, width) if fit == "crop" else max(height, width)
    if side != size:
        new_size = (round(height * size / side), round(width * size / side))
        if fit == "crop":
            new_size = (max(size, new_size[0]), max(size, new_size[1]))
        images = F.interpolate(images, size=new_size, mode="bicubic", antialias=True, align_corners=False)
        height, width = new_size
    if fit == "crop":
        top, left = (height - size) // 2, (width - size) // 2
        images = images[..., top : top + size, left : left + size]
    elif (height, width) != (size, size):
        pad_h, pad_w = size - height, size - width
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def load_checkpoint_state(model_file: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a reward checkpoint (.safetensors, or pickled: read weights-only), without a
    "state_dict" wrapper or DataParallel's "module." prefix."""
    from ..runtime.checkpoint_config import CheckpointFormatError
    from ..runtime.checkpoints import read_state_dict

    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(f"--reward-model {path}: no such file (the {name} weights)")
    try:
        state = read_state_dict(path)
    except CheckpointFormatError as error:
        raise ValueError(f"--reward-model {path}: cannot read it ({name} weights expected): {error}") from error
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--reward-model {path}: not a {name} checkpoint (expected a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _count_blocks(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state for m in [pattern.match(key)] if m}
    return max(indices) + 1 if indices else 0


def _take(state: dict, key: str, name: str, path: str | Path) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"--reward-model {path}: not a {name} checkpoint (no '{key}')")
    return state.pop(key)


def _refuse_leftovers(state: dict, name: str, path: str | Path) -> None:
    if state:
        raise ValueError(
            f"--reward-model {path}: the {name} checkpoint has tensors this loader does not "
            f"know (an unsupported variant?): {sorted(state)[:8]}"
        )


def _tokenizer_file(directory: str | Path, filename: str, name: str) -> Path:
    path = Path(directory) / filename
    if not path.is_file():
        raise FileNotFoundError(f"--reward-tokenizer {directory}: no {filename} there (the {name} tokenizer)")
    return path


# ------------------------------------------------------------------------------------------- HPSv2


class HPSv2Reward(torch.nn.Module):
    """HPSv2 on a transformers `CLIPModel`: reward(images, prompts) -> cosine similarity per image."""

    prompt_conditioned = True

    def __init__(self, clip, tokenizer, eos_token_id: int):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.image_size = clip.config.vision_config.image_size
        self.context_length = clip.config.text_config.max_position_embeddings

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        device = self.clip.logit_scale.device
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        hidden = self.clip.text_model(input_ids=ids).last_hidden_state
        end = (ids == self.eos_token_id).int().argmax(dim=1)  # first end-of-text token: open_clip's pooling
        return F.normalize(self.clip.text_projection(hidden[torch.arange(len(ids), device=device), end]), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = preprocess_images(images, self.image_size, fit="pad").to(self.clip.logit_scale.dtype)
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        _check_batch(images, prompts, "hpsv2")
        return (self.embed_images(images) * self.embed_prompts(prompts)).sum(dim=-1).float()


def _open_clip_to_transformers(state: dict, path: str | Path) -> tuple[dict, dict]:
    """(CLIPConfig kwargs, CLIPModel state dict) from an open_clip ViT checkpoint."""
    name, state = "hpsv2", dict(state)
    state.pop("attn_mask", None)
    conv = _take(state, "visual.conv1.weight", name, path)
    positions = _take(state, "visual.positional_embedding", name, path)
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(positions.shape[0] - 1)
    if grid * grid != positions.shape[0] - 1:
        raise ValueError(f"--reward-model {path}: {name} vision positions {positions.shape[0]} are not 1 + a square")
    tokens = _take(state, "token_embedding.weight", name, path)
    text_positions = _take(state, "positional_embedding", name, path)
    text_width = tokens.shape[1]
    visual_proj, text_proj = _take(state, "visual.proj", name, path), _take(state, "text_projection", name, path)
    out = {
        "vision_model.embeddings.patch_embedding.weight": conv,
        "vision_model.embeddings.position_embedding.weight": positions,
        "vision_model.embeddings.class_embedding": _take(state, "visual.class_embedding", name, path),
        "visual_projection.weight": visual_proj.t().contiguous(),
        "text_model.embeddings.token_embedding.weight": tokens,
        "text_model.embeddings.position_embedding.weight": text_positions,
        "text_projection.weight": text_proj.t().contiguous(),
        "logit_scale": _take(state, "logit_scale", name, path).reshape(()),
    }
    for src, dst in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ):
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = _take(state, f"{src}.{p}", name, path)
    vision_layers = _count_blocks(state, "visual.transformer.resblocks.")
    text_layers = _count_blocks(state, "transformer.resblocks.")
    for src, dst, layers in (
        ("visual.transformer.resblocks", "vision_model.encoder.layers", vision_layers),
        ("transformer.resblocks", "text_model.encoder.layers", text_layers),
    ):
        for i in range(layers):
            s, d = f"{src}.{i}", f"{dst}.{i}"
            for q, p in zip(
                ("q_proj", "k_proj", "v_proj"), _take(state, f"{s}.attn.in_proj_weight", name, path).chunk(3)
            ):
                out[f"{d}.self_attn.{q}.weight"] = p
            for q, p in zip(
                ("q_proj", "k_proj", "v_proj"), _take(state, f"{s}.attn.in_proj_bias", name, path).chunk(3)
            ):
                out[f"{d}.self_attn.{q}.bias"] = p
            for a, b in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                for p in ("weight", "bias"):
                    out[f"{d}.{b}.{p}"] = _take(state, f"{s}.{a}.{p}", name, path)
    _refuse_leftovers(state, name, path)
    mlp = lambda prefix: out[f"{prefix}.0.mlp.fc1.weight"].shape[0]  # noqa: E731
    config = {
        "projection_dim": visual_proj.shape[1],
        "vision_config": {
            "hidden_size": vision_width,
            "patch_size": patch,
            "image_size": grid * patch,
            "num_hidden_layers": vision_layers,
            "intermediate_size": mlp("vision_model.encoder.layers"),
            "num_attention_heads": vision_width // _OPEN_CLIP_VISION_HEAD_WIDTH.get(vision_width, 64),
            "projection_dim": visual_proj.shape[1],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "vocab_size": tokens.shape[0],
            "hidden_size": text_width,
            "max_position_embeddings": text_positions.shape[0],
            "num_hidden_layers": text_layers,
            "intermediate_size": mlp("text_model.encoder.layers"),
            "num_attention_heads": text_width // 64,
            "projection_dim": text_proj.shape[1],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
    }
    return config, out


def load_hpsv2(model_file: str | Path, tokenizer_dir: str | Path) -> HPSv2Reward:
    """HPSv2 from its checkpoint (open_clip layout) and a folder with CLIP's vocab.json + merges.txt."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    state = load_checkpoint_state(model_file, "hpsv2")
    vocab = _tokenizer_file(tokenizer_dir, "vocab.json", "hpsv2 (CLIP BPE)")
    merges = _tokenizer_file(tokenizer_dir, "merges.txt", "hpsv2 (CLIP BPE)")
    config, converted = _open_clip_to_transformers(state, model_file)
    tokenizer = CLIPTokenizer(str(vocab), str(merges))
    _check_vocabulary(len(tokenizer), config["text_config"]["vocab_size"], "hpsv2", model_file)
    clip = _build(lambda: CLIPModel(CLIPConfig(**config)), converted, "hpsv2", model_file)
    return HPSv2Reward(clip, tokenizer, tokenizer.eos_token_id)


# -------------------------------------------------------------------------------------- ImageReward


class ImageRewardModel(torch.nn.Module):
    """ImageReward on transformers' BLIP vision and text models: reward(images, prompts) -> score."""

    prompt_conditioned = True

    def __init__(self, vision, text, head: torch.nn.Sequential, tokenizer):
        super().__init__()
        self.vision, self.text, self.head = vision, text, head
        self.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = vision.config.image_size

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        _check_batch(images, prompts, "imagereward")
        device = self.head[0].weight.device
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=IMAGEREWARD_MAX_TOKENS, return_tensors="pt"
        ).to(device)
        pixels = preprocess_images(images, self.image_size).to(self.head[0].weight.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
        hidden = self.text(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        score = self.head(hidden[:, 0]).squeeze(-1)
        return ((score - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).float()


_IMAGEREWARD_HEAD = (0, 2, 4, 6, 7)  # the Linear layers of ImageReward's MLP (dropouts between)
_IMAGEREWARD_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def _imagereward_to_transformers(state: dict, path: str | Path) -> tuple[dict, dict, dict, list]:
    """(vision config, text config, {"vision": sd, "text": sd}, head Linear weights) from ImageReward.pt."""
    name, state = "imagereward", dict(state)
    for key in [k for k in state if k.startswith(_IMAGEREWARD_UNUSED)]:
        del state[key]
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    conv = _take(state, v + "patch_embed.proj.weight", name, path)
    positions = _take(state, v + "pos_embed", name, path)
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(positions.shape[1] - 1)
    vision = {
        "embeddings.patch_embedding.weight": conv,
        "embeddings.patch_embedding.bias": _take(state, v + "patch_embed.proj.bias", name, path),
        "embeddings.position_embedding": positions,
        "embeddings.class_embedding": _take(state, v + "cls_token", name, path),
        "post_layernorm.weight": _take(state, v + "norm.weight", name, path),
        "post_layernorm.bias": _take(state, v + "norm.bias", name, path),
    }
    vision_layers = _count_blocks(state, v + "blocks.")
    for i in range(vision_layers):
        for a, b in (
            ("norm1", "layer_norm1"),
            ("attn.qkv", "self_attn.qkv"),
            ("attn.proj", "self_attn.projection"),
            ("norm2", "layer_norm2"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            for p in ("weight", "bias"):
                vision[f"encoder.layers.{i}.{b}.{p}"] = _take(state, f"{v}blocks.{i}.{a}.{p}", name, path)
    text = {k[len(t) :]: state.pop(k) for k in [k for k in state if k.startswith(t)]}
    if "embeddings.word_embeddings.weight" not in text:
        raise ValueError(f"--reward-model {path}: not a {name} checkpoint (no '{t}embeddings.word_embeddings.weight')")
    head = [
        (_take(state, f"mlp.layers.{i}.weight", name, path), _take(state, f"mlp.layers.{i}.bias", name, path))
        for i in _IMAGEREWARD_HEAD
    ]
    _refuse_leftovers(state, name, path)
    words = text["embeddings.word_embeddings.weight"]
    text_layers = _count_blocks(text, "encoder.layer.")
    vision_config = {
        "hidden_size": width,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_hidden_layers": vision_layers,
        "intermediate_size": vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_attention_heads": width // 64,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
    }
    text_config = {
        "vocab_size": words.shape[0],
        "hidden_size": words.shape[1],
        "encoder_hidden_size": width,
        "max_position_embeddings": text["embeddings.position_embeddings.weight"].shape[0],
        "num_hidden_layers": text_layers,
        "num_attention_heads": words.shape[1] // 64,
        "intermediate_size": text["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "is_decoder": True,  # is_decoder builds the cross-attention
    }
    return vision_config, text_config, {"vision": vision, "text": text}, head


def load_imagereward(model_file: str | Path, tokenizer_dir: str | Path) -> ImageRewardModel:
    """ImageReward from its ImageReward.pt and a folder with bert-base-uncased's vocab.txt."""
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    state = load_checkpoint_state(model_file, "imagereward")
    vocab = _tokenizer_file(tokenizer_dir, "vocab.txt", "imagereward (BERT)")
    vision_config, text_config, converted, head_weights = _imagereward_to_transformers(state, model_file)
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})  # as BLIP does
    _check_vocabulary(len(tokenizer), text_config["vocab_size"], "imagereward", model_file)
    vision = _build(
        lambda: BlipVisionModel(BlipVisionConfig(**vision_config)), converted["vision"], "imagereward", model_file
    )
    text = _build(
        lambda: BlipTextModel(BlipTextConfig(**text_config), add_pooling_layer=False),
        converted["text"],
        "imagereward",
        model_file,
    )
    linears = []
    for weight, bias in head_weights:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        layer.load_state_dict({"weight": weight, "bias": bias})
        linears.append(layer)
    return ImageRewardModel(vision, text, torch.nn.Sequential(*linears), tokenizer)


# ------------------------------------------------------------------------------------------ shared


def _check_batch(images: torch.Tensor, prompts: list[str] | None, name: str) -> None:
    if prompts is None or len(prompts) != images.shape[0]:
        raise ValueError(
            f"--reward {name} scores each image against its prompt: got {images.shape[0]} images "
            f"and {'no' if prompts is None else len(prompts)} prompts"
        )


def _check_vocabulary(tokens: int, embeddings: int, name: str, path: str | Path) -> None:
    if tokens > embeddings:
        raise ValueError(
            f"--reward-model {path}: the tokenizer has {tokens} tokens but the {name} text encoder only "
            f"{embeddings} embeddings: wrong --reward-tokenizer folder?"
        )


def _build(build, state: dict, name: str, path: str | Path) -> torch.nn.Module:
    """`build()` filled with exactly `state` (no random initialisation first), float32 on the CPU."""
    from ..runtime.checkpoints import build_with_weights

    return build_with_weights(
        build, state, f"{name} model", f"--reward-model {path}", torch.device("cpu"), torch.float32
    )
