"""Load SD1.5 / SDXL checkpoints into diffusers/transformers modules, fully offline.

Two layouts: a single-file LDM checkpoint (`.safetensors`, or a pickled `.ckpt`/`.pt` read with
`weights_only=True`) converted with diffusers' `single_file_utils`, and a diffusers folder
(`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/` ...). Loaded parts are
cached by (path, modification time), so a second load of the same file is free.

Tokenizers: single files carry none. The loader looks, in order, in
`<models>/tokenizers/<checkpoint file stem>/` and `<models>/tokenizers/clip/` (`vocab.json` +
`merges.txt`, the CLIP BPE files; SDXL's two encoders share that vocabulary), where `<models>`
is the folder holding the `checkpoints` folder the file sits in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from .checkpoint_config import (
    SD15_CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointFormatError,
    detect_family,
    infer_clip_config,
    infer_unet_config,
    infer_vae_config,
    strip_prefix,
)
from .types import SD15_NOISE_SCHEDULE, ClipHost, ModelHost, VaeHost

TOKENIZER_FILES = ("vocab.json", "merges.txt")


@dataclass
class LoadedCheckpoint:
    """The three outputs of a checkpoint loader, before wrapping per call."""

    model: ModelHost
    clip: ClipHost
    vae: VaeHost


_CACHE: dict[tuple[str, int], LoadedCheckpoint] = {}


def load_checkpoint(path: str | Path) -> tuple[ModelHost, ClipHost, VaeHost]:
    """MODEL, CLIP and VAE from a single-file checkpoint or a diffusers folder, cached by mtime.

    Each call returns fresh clones (own options) sharing the cached weights.
    """
    path = Path(path)
    if path.name == "model_index.json":
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _CACHE:
        loader = _load_diffusers_folder if path.is_dir() else _load_single_file
        _CACHE[key] = loader(path)
    loaded = _CACHE[key]
    return loaded.model.clone(), loaded.clip.clone(), loaded.vae


def clear_cache() -> None:
    """Forget every cached checkpoint (frees the memory they hold)."""
    _CACHE.clear()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a pickled checkpoint loaded with weights_only."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointFormatError(f"{path.name}: not a readable safetensors file ({error})") from error
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise CheckpointFormatError(f"{path.name}: not a readable checkpoint ({error})") from error
    return data.get("state_dict", data)


def find_tokenizer_dir(checkpoint: Path) -> Path:
    """Where the CLIP tokenizer for a single-file checkpoint lives (see module docstring)."""
    roots = [p.parent for p in checkpoint.parents if p.name == "checkpoints"] or [checkpoint.parent]
    candidates = []
    for root in roots:
        candidates += [root / "tokenizers" / checkpoint.stem, root / "tokenizers" / "clip"]
    for candidate in candidates:
        if all((candidate / f).is_file() for f in TOKENIZER_FILES):
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{checkpoint.name}: no CLIP tokenizer found (single-file checkpoints carry none). Put "
        f"vocab.json and merges.txt of openai/clip-vit-large-patch14 in one of: {searched}"
    )


def _load_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)


def _strict_load(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, name: str) -> torch.nn.Module:
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if not any(k.startswith("text_model.") for k in module.state_dict()):
        # transformers 5's CLIPTextModel has no `text_model.` level; checkpoints (and diffusers) do
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{name}: the {what} weights do not fit the architecture inferred from them "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return module.eval().requires_grad_(False)


def _text_encoder(state: dict, hidden_act: str, tokenizer, with_projection: bool, name: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**infer_clip_config(state, hidden_act, tokenizer.bos_token_id, tokenizer.eos_token_id))
    if config.vocab_size != len(tokenizer):
        raise CheckpointFormatError(
            f"{name}: the text encoder has {config.vocab_size} token embeddings but the tokenizer "
            f"has {len(tokenizer)} tokens; wrong tokenizer folder?"
        )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _strict_load(cls(config), state, "text encoder", name)


def _load_single_file(path: Path) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    name = path.name
    state = read_state_dict(path)
    family = detect_family(state, name)
    tokenizer = _load_tokenizer(find_tokenizer_dir(path))

    if family == "sd15":
        clip_state = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(SD15_CLIP_PREFIX)})
        encoders = [_text_encoder(clip_state, "quick_gelu", tokenizer, False, name)]
        pooled_dim = None
    else:
        l_state = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(SDXL_CLIP_L_PREFIX)})
        clip_l = _text_encoder(l_state, "quick_gelu", tokenizer, False, name)

        # convert_open_clip_checkpoint wants the model only for its width (q/k/v split when the
        # file has no text_projection); the width is read from the token embedding
        width = int(state[f"{SDXL_CLIP_G_PREFIX}token_embedding.weight"].shape[1])
        g_state = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=width)), state,
                                               prefix=SDXL_CLIP_G_PREFIX)
        clip_g = _text_encoder(g_state, "gelu", tokenizer, True, name)
        encoders = [clip_l, clip_g]
        pooled_dim = clip_g.config.projection_dim

    unet_ldm = strip_prefix(state, UNET_PREFIX)
    unet_config = infer_unet_config(unet_ldm, family, pooled_dim)
    unet = UNet2DConditionModel(**unet_config)
    _strict_load(unet, convert_ldm_unet_checkpoint(state, unet_config), "UNet", name)

    vae_config = infer_vae_config(strip_prefix(state, VAE_PREFIX), family)
    vae = AutoencoderKL(**vae_config)
    _strict_load(vae, convert_ldm_vae_checkpoint(state, vae_config), "VAE", name)

    return LoadedCheckpoint(
        model=ModelHost(unet=unet, family=family, noise_schedule=dict(SD15_NOISE_SCHEDULE)),
        clip=ClipHost(tokenizer=tokenizer, text_encoders=encoders, family=family),
        vae=VaeHost(vae=vae, scaling_factor=vae_config["scaling_factor"], family=family),
    )


def _load_diffusers_folder(path: Path) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointFormatError(f"{path}: a folder checkpoint needs a model_index.json (diffusers layout)")
    index = json.loads(index_file.read_text())
    family = "sdxl" if "text_encoder_2" in index else "sd15"
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (path / part).is_dir():
            raise CheckpointFormatError(f"{path}: diffusers folder has no '{part}/' subfolder")
    unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True).eval()
    tokenizer = _load_tokenizer(path / "tokenizer")
    encoders = [CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder", local_files_only=True).eval()]
    if family == "sdxl":
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(str(path), subfolder="text_encoder_2", local_files_only=True).eval()
        )
    schedule = dict(SD15_NOISE_SCHEDULE)
    prediction_type = "epsilon"
    scheduler_config = path / "scheduler" / "scheduler_config.json"
    if scheduler_config.is_file():
        config = json.loads(scheduler_config.read_text())
        schedule.update({k: config[k] for k in schedule if k in config})
        prediction_type = config.get("prediction_type", prediction_type)
    for module in [unet, vae, *encoders]:
        module.requires_grad_(False)
    return LoadedCheckpoint(
        model=ModelHost(unet=unet, family=family, noise_schedule=schedule, prediction_type=prediction_type),
        clip=ClipHost(tokenizer=tokenizer, text_encoders=encoders, family=family),
        vae=VaeHost(vae=vae, scaling_factor=float(vae.config.scaling_factor), family=family),
    )
