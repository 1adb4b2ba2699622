"""Load SD1.5 / SDXL checkpoints into diffusers/transformers modules, fully offline.

Two layouts: a single-file LDM checkpoint (`.safetensors`, or a pickled `.ckpt`/`.pt` read with
`weights_only=True`) converted with diffusers' `single_file_utils`, and a diffusers folder
(`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/` ...). Loaded parts are
cached by (path, modification time), so a second load of the same file is free.

Key layouts: every SD1.5 / SDXL / SSD-1B layout ComfyUI normalises (`checkpoint_config`): CLIP-L
with or without the `text_model.` level, OpenCLIP-G fused or already split, position ids present
or not, a diffusers-named VAE, fp16 / bf16 tensors, `.ckpt` pickles wrapping a `state_dict`, and
ComfyUI's own CheckpointSave output (with its `v_pred` marker for v-prediction models).

Tokenizers: single files carry none, and none is needed. The loader takes, in order,
`<models>/tokenizers/<checkpoint file stem>/`, then `<models>/tokenizers/clip/` (`vocab.json` +
`merges.txt`; `<models>` is the folder holding the `checkpoints` folder the file sits in), and
otherwise CLIP's tokenizer shipped with the pack (`clip_tokenizer`). SDXL's two encoders share the
vocabulary. A diffusers folder uses its own `tokenizer/`, or the shipped one when it has none.

Placement (`devices`): each part is built with its parameters on the meta device, then takes the
file's tensors converted one by one to the target device and dtype (`load_state_dict(assign=True)`),
so no randomly initialised float32 copy is ever allocated and, on CUDA, the weights exist on the host
only as read from the file. The cache keys on the placement too: the same file on another device or
in another dtype is another entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..quantize.checkpoint import read_quant_metadata
from .checkpoint_config import (
    REFINER_CLIP_G_PREFIX,
    SD15_CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    UNET_PREFIX,
    CheckpointFormatError,
    clip_l_state,
    detect_family,
    infer_clip_config,
    infer_unet_config,
    infer_vae_config,
    open_clip_state,
    prediction_type,
    strip_prefix,
    vae_weights,
)
from .clip_tokenizer import packaged_clip_tokenizer
from .devices import Placement, current_placement
from .model_types import SD_NOISE_SCHEDULE, ClipHost, ModelHost, VaeHost
from .quantized_unet import build_quantized_unet

TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_ROOT_FOLDERS = ("checkpoints", "text_encoders", "clip")  # models/<these>/...: models/tokenizers/
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PACKAGED_TOKENIZER = "the CLIP tokenizer shipped with the pack"


@dataclass
class LoadedCheckpoint:
    """The three outputs of a checkpoint loader, before wrapping per call."""

    model: ModelHost
    clip: ClipHost
    vae: VaeHost


_CACHE: dict[tuple[str, int, tuple[str, ...]], LoadedCheckpoint] = {}


def load_checkpoint(path: str | Path, placement: Placement | None = None) -> tuple[ModelHost, ClipHost, VaeHost]:
    """MODEL, CLIP and VAE from a single-file checkpoint or a diffusers folder, cached by mtime and
    placement (`placement` None: the run's, `devices.current_placement()`).

    Each call returns fresh clones (own options) sharing the cached weights.
    """
    placement = current_placement() if placement is None else placement
    path = Path(path)
    if path.name == "model_index.json":
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    key = (str(path.resolve()), path.stat().st_mtime_ns, placement.key())
    if key not in _CACHE:
        loader = _load_diffusers_folder if path.is_dir() else _load_single_file
        _CACHE[key] = loader(path, placement)
    loaded = _CACHE[key]
    return loaded.model.clone(), loaded.clip.clone(), loaded.vae


def clear_cache() -> None:
    """Forget every cached checkpoint (frees the memory they hold)."""
    _CACHE.clear()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` / `.sft` file, or of a pickled checkpoint loaded with weights_only
    (unwrapped as ComfyUI does: its `state_dict` entry, or the one dict it holds)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointFormatError(f"{path.name}: not a readable safetensors file ({error})") from error
    try:
        with _lightning_globals_allowed():
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise CheckpointFormatError(f"{path.name}: not a readable checkpoint ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointFormatError(
            f"{path.name}: not a checkpoint (a pickled {type(data).__name__}, not a dict of tensors)"
        )
    return _unwrap_pickled(data)


class _LightningCallbackStandIn:
    """Stands in for PyTorch Lightning's `ModelCheckpoint` callback, whose state training `.ckpt`
    files (e.g. sd-v1-4.ckpt) pickle beside the weights; loaded as an inert object and ignored."""


def _checkpoint_safe_globals() -> list:
    """What training checkpoints pickle besides tensors, allowed for `weights_only` loading as
    ComfyUI allows it: the Lightning callback stand-in and numpy scalars (`global_step`, scores)."""
    from _codecs import encode

    allowed: list = [
        (_LightningCallbackStandIn, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        encode,
    ]
    try:
        import numpy
        from numpy import dtypes
    except ImportError:
        return allowed
    scalar = numpy.array(0.0)[()].__reduce__()[0]  # numpy's scalar reconstructor, under both its names
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), numpy.dtype]
    allowed += [
        getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType") if hasattr(dtypes, n)
    ]
    return allowed


@contextmanager
def _lightning_globals_allowed() -> Iterator[None]:
    """Within the block, `torch.load(weights_only=True)` also accepts `_checkpoint_safe_globals()`
    (torch's allow-list is process-wide: other threads' loads see it meanwhile, which is harmless for
    these inert types; ComfyUI allows them for good). torch < 2.5 has no scoped allow-list: unchanged."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is None:
        yield
        return
    with scoped(_checkpoint_safe_globals()):
        yield


def _unwrap_pickled(data: dict) -> dict:
    """The state dict inside a pickled checkpoint: `data["state_dict"]` (PyTorch Lightning), the only
    value when that is itself a dict (e.g. `{"model": {...}}`), else `data`."""
    if isinstance(data.get("state_dict"), dict):
        return data["state_dict"]
    if len(data) == 1:
        (only,) = data.values()
        if isinstance(only, dict):
            return only
    return data


def tokenizer_dirs(checkpoint: Path) -> list[Path]:
    """The folders searched, in order, for a single-file checkpoint's (or text-encoder file's) own CLIP
    tokenizer files: under the models folder holding its `checkpoints` / `text_encoders` / `clip` folder."""
    roots = [p.parent for p in checkpoint.parents if p.name in TOKENIZER_ROOT_FOLDERS] or [checkpoint.parent]
    candidates = []
    for root in roots:
        candidates += [root / "tokenizers" / checkpoint.stem, root / "tokenizers" / "clip"]
    return candidates


def find_tokenizer_dir(checkpoint: Path) -> Path | None:
    """The first of `tokenizer_dirs(checkpoint)` holding `vocab.json` + `merges.txt`, or None (then
    the packaged CLIP tokenizer is used)."""
    for candidate in tokenizer_dirs(checkpoint):
        if all((candidate / f).is_file() for f in TOKENIZER_FILES):
            return candidate
    return None


@dataclass(frozen=True)
class TokenizerChoice:
    """The tokenizer a single-file checkpoint gets, where it came from, and the folder to put the
    checkpoint's own tokenizer files in (named in errors)."""

    tokenizer: object
    source: str
    own_dir: Path


def resolve_tokenizer(checkpoint: Path) -> TokenizerChoice:
    """The tokenizer for a single-file checkpoint: a tokenizers folder the user supplied, else the
    packaged CLIP tokenizer."""
    own_dir = tokenizer_dirs(checkpoint)[0]
    directory = find_tokenizer_dir(checkpoint)
    if directory is not None:
        return TokenizerChoice(_load_tokenizer(directory), str(directory), own_dir)
    return TokenizerChoice(packaged_clip_tokenizer(), PACKAGED_TOKENIZER, own_dir)


def _load_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)


def _placed(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fresh contiguous copy of a file tensor on `device`, floating point ones in `dtype` (never a
    view of the file's tensor, which in-place LoRA patching would then share)."""
    target = dtype if tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=device, dtype=target, copy=True, memory_format=torch.contiguous_format)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Within the block, every parameter a module registers goes to the meta device (no storage);
    buffers stay real (CLIP's position ids are computed, not read). Uses torch's global parameter
    registration hook, so modules built meanwhile in other threads are affected too."""

    def to_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None):
        if param is None or param.device.type == "meta":
            return None
        return torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(to_meta)
    try:
        yield
    finally:
        handle.remove()


def build_with_weights(
    build: Callable[[], torch.nn.Module],
    state: dict[str, torch.Tensor],
    what: str,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """`build()` with its parameters on the meta device, then the file's tensors placed on `device` in
    `dtype` and assigned: the module never holds a random float32 initialisation."""
    with _parameters_on_meta():
        module = build()
    module = _strict_load(module, state, what, name, placement=(device, dtype))
    return module.to(device=device)  # buffers (CLIP position ids) follow; parameters are already there


def _strict_load(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    name: str,
    placement: tuple[torch.device, torch.dtype] | None = None,
) -> torch.nn.Module:
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if not any(k.startswith("text_model.") for k in module.state_dict()):
        # transformers 5's CLIPTextModel has no `text_model.` level; checkpoints (and diffusers) do
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    if placement is not None:  # assign the placed tensors to a module built on the meta device
        wanted = module.state_dict().keys()
        state = {k: _placed(v, *placement) if k in wanted else v for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=placement is not None)
    except RuntimeError as error:  # a tensor whose shape does not fit
        raise CheckpointFormatError(
            f"{name}: the {what} weights do not fit the architecture inferred from them ({error})"
        ) from error
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{name}: the {what} weights do not fit the architecture inferred from them "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return module.eval().requires_grad_(False)


def _text_encoder(
    state: dict, hidden_act: str, tokens: TokenizerChoice, with_projection: bool, name: str, placement: Placement
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tokens.tokenizer
    embedding = "text_model.embeddings.token_embedding.weight"
    if embedding not in state:
        raise CheckpointFormatError(f"{name}: a text encoder has no token embedding ('{embedding}' after renaming)")
    vocab_size = int(state[embedding].shape[0])
    if vocab_size != len(tokenizer):
        raise CheckpointFormatError(
            f"{name}: the text encoder has {vocab_size} token embeddings but the tokenizer ({tokens.source}) "
            f"has {len(tokenizer)} tokens; put this checkpoint's own vocab.json + merges.txt in {tokens.own_dir}"
        )
    try:
        config = CLIPTextConfig(**infer_clip_config(state, hidden_act, tokenizer.bos_token_id, tokenizer.eos_token_id))
    except KeyError as error:
        raise CheckpointFormatError(f"{name}: the text encoder lacks {error} (after renaming)") from error
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return build_with_weights(
        lambda: cls(config), state, "text encoder", name, placement.device, placement.text_encoder_dtype
    )


# the text encoders of each family's CLIP, in ClipHost order: (transformers activation, projected pooled)
CLIP_ENCODERS = {
    "sd15": [("quick_gelu", False)],  # OpenAI CLIP-L
    "sdxl": [("quick_gelu", False), ("gelu", True)],  # CLIP-L, OpenCLIP-G
    "sdxl_refiner": [("gelu", True)],  # OpenCLIP-G
}


def build_clip(
    family: str, encoder_states: list[dict], tokens: TokenizerChoice, name: str, placement: Placement
) -> ClipHost:
    """A family's CLIP from its encoders' transformers-named weights (`clip_l_state` / `open_clip_state`),
    in `CLIP_ENCODERS` order: what a checkpoint's CLIP and the split text-encoder files both become."""
    specs = CLIP_ENCODERS[family]
    if len(specs) != len(encoder_states):
        raise ValueError(f"{name}: a {family} CLIP has {len(specs)} text encoder(s), got {len(encoder_states)}")
    encoders = [
        _text_encoder(state, act, tokens, projected, name, placement)
        for state, (act, projected) in zip(encoder_states, specs)
    ]
    return ClipHost(tokenizer=tokens.tokenizer, text_encoders=encoders, family=family)


def _load_single_file(path: Path, placement: Placement) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    name = path.name
    state = read_state_dict(path)
    quantized = read_quant_metadata(path)  # a quantized checkpoint (quantize/checkpoint.py), or None
    family = quantized["family"] if quantized else detect_family(state, name)
    tokens = resolve_tokenizer(path)

    if family == "sd15":
        encoder_states = [clip_l_state(state, SD15_CLIP_PREFIX)]
    elif family == "sdxl_refiner":
        encoder_states = [open_clip_state(state, REFINER_CLIP_G_PREFIX, name)]
    else:
        encoder_states = [clip_l_state(state, SDXL_CLIP_L_PREFIX), open_clip_state(state, SDXL_CLIP_G_PREFIX, name)]
    clip = build_clip(family, encoder_states, tokens, name, placement)
    encoders = clip.text_encoders
    pooled_dim = None if family == "sd15" else encoders[-1].config.projection_dim

    if quantized:
        unet = build_quantized_unet(state, quantized, name).to(device=placement.device)  # its own dtypes
    else:
        unet_ldm = strip_prefix(state, UNET_PREFIX)
        unet_config = infer_unet_config(unet_ldm, family, pooled_dim)
        unet = build_with_weights(
            lambda: UNet2DConditionModel(**unet_config),
            convert_ldm_unet_checkpoint(state, unet_config),
            "UNet",
            name,
            placement.device,
            placement.unet_dtype,
        )

    vae_state, diffusers_names = vae_weights(state, name)
    vae_config = infer_vae_config(vae_state, family, diffusers_names)
    if not diffusers_names:
        vae_state = convert_ldm_vae_checkpoint(state, vae_config)
    vae = build_with_weights(
        lambda: AutoencoderKL(**vae_config), vae_state, "VAE", name, placement.device, placement.vae_dtype
    )

    return LoadedCheckpoint(
        model=ModelHost(
            unet=unet, family=family, noise_schedule=dict(SD_NOISE_SCHEDULE), prediction_type=prediction_type(state)
        ),
        clip=clip,
        vae=VaeHost(vae=vae, scaling_factor=vae_config["scaling_factor"], family=family),
    )


def _load_diffusers_folder(path: Path, placement: Placement) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointFormatError(f"{path}: a folder checkpoint needs a model_index.json (diffusers layout)")
    index = json.loads(index_file.read_text())
    family = "sdxl" if "text_encoder_2" in index else "sd15"
    for part in ("unet", "vae", "text_encoder"):
        if not (path / part).is_dir():
            raise CheckpointFormatError(f"{path}: diffusers folder has no '{part}/' subfolder")
    # read straight into the target dtype (one host copy), then moved to the device
    device, text_dtype = placement.device, placement.text_encoder_dtype
    unet = (
        UNet2DConditionModel.from_pretrained(
            str(path), subfolder="unet", local_files_only=True, torch_dtype=placement.unet_dtype
        )
        .to(device)
        .eval()
    )
    vae = (
        AutoencoderKL.from_pretrained(
            str(path), subfolder="vae", local_files_only=True, torch_dtype=placement.vae_dtype
        )
        .to(device)
        .eval()
    )
    tokenizer = _load_tokenizer(path / "tokenizer") if (path / "tokenizer").is_dir() else packaged_clip_tokenizer()
    encoders = [
        CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder", local_files_only=True, dtype=text_dtype)
        .to(device)
        .eval()
    ]
    if family == "sdxl":
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                str(path), subfolder="text_encoder_2", local_files_only=True, dtype=text_dtype
            )
            .to(device)
            .eval()
        )
    schedule = dict(SD_NOISE_SCHEDULE)
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
