"""Load SD1.5 / SDXL checkpoints into diffusers/transformers modules, fully offline.

Two layouts: a single-file LDM checkpoint (`.safetensors`, or a pickled `.ckpt`/`.pt` read with
`weights_only=True`) converted with diffusers' `single_file_utils`, and a diffusers folder
(`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/` ...). Loaded parts are
cached by (path, modification time), so a second load of the same file is free.

Tokenizers: single files carry none. The loader looks, in order, in
`<models>/tokenizers/<checkpoint file stem>/` and `<models>/tokenizers/clip/` (`vocab.json` +
`merges.txt`, the CLIP BPE files; SDXL's two encoders share that vocabulary), where `<models>`
is the folder holding the `checkpoints` folder the file sits in.

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
from .devices import Placement, current_placement
from .types import SD15_NOISE_SCHEDULE, ClipHost, ModelHost, VaeHost

TOKENIZER_FILES = ("vocab.json", "merges.txt")


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
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path.name}: not a checkpoint (a pickled {type(data).__name__}, not a dict of tensors)")
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


def build_with_weights(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], what: str, name: str,
                       device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`build()` with its parameters on the meta device, then the file's tensors placed on `device` in
    `dtype` and assigned: the module never holds a random float32 initialisation."""
    with _parameters_on_meta():
        module = build()
    module = _strict_load(module, state, what, name, placement=(device, dtype))
    return module.to(device=device)  # buffers (CLIP position ids) follow; parameters are already there


def _strict_load(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, name: str,
                 placement: tuple[torch.device, torch.dtype] | None = None) -> torch.nn.Module:
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if not any(k.startswith("text_model.") for k in module.state_dict()):
        # transformers 5's CLIPTextModel has no `text_model.` level; checkpoints (and diffusers) do
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    if placement is not None:  # assign the placed tensors to a module built on the meta device
        wanted = module.state_dict().keys()
        state = {k: _placed(v, *placement) if k in wanted else v for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=placement is not None)
    except RuntimeError as error:   # a tensor whose shape does not fit
        raise CheckpointFormatError(f"{name}: the {what} weights do not fit the architecture inferred from them "
                                    f"({error})") from error
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{name}: the {what} weights do not fit the architecture inferred from them "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return module.eval().requires_grad_(False)


def _text_encoder(state: dict, hidden_act: str, tokenizer, with_projection: bool, name: str,
                  placement: Placement):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**infer_clip_config(state, hidden_act, tokenizer.bos_token_id, tokenizer.eos_token_id))
    if config.vocab_size != len(tokenizer):
        raise CheckpointFormatError(
            f"{name}: the text encoder has {config.vocab_size} token embeddings but the tokenizer "
            f"has {len(tokenizer)} tokens; wrong tokenizer folder?"
        )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return build_with_weights(lambda: cls(config), state, "text encoder", name, placement.device,
                         placement.text_encoder_dtype)


def _load_single_file(path: Path, placement: Placement) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    name = path.name
    state = read_state_dict(path)
    from ...quantize.checkpoint import read_quant_metadata

    quantized = read_quant_metadata(path)  # a quantized checkpoint (quantize/checkpoint.py), or None
    family = quantized["family"] if quantized else detect_family(state, name)
    tokenizer = _load_tokenizer(find_tokenizer_dir(path))

    if family == "sd15":
        clip_state = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(SD15_CLIP_PREFIX)})
        encoders = [_text_encoder(clip_state, "quick_gelu", tokenizer, False, name, placement)]
        pooled_dim = None
    else:
        l_state = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(SDXL_CLIP_L_PREFIX)})
        clip_l = _text_encoder(l_state, "quick_gelu", tokenizer, False, name, placement)

        # convert_open_clip_checkpoint wants the model only for its width (q/k/v split when the
        # file has no text_projection); the width is read from the token embedding
        width = int(state[f"{SDXL_CLIP_G_PREFIX}token_embedding.weight"].shape[1])
        g_state = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=width)), state,
                                               prefix=SDXL_CLIP_G_PREFIX)
        clip_g = _text_encoder(g_state, "gelu", tokenizer, True, name, placement)
        encoders = [clip_l, clip_g]
        pooled_dim = clip_g.config.projection_dim

    if quantized:
        from .quantize import build_quantized_unet

        unet = build_quantized_unet(state, quantized, name).to(device=placement.device)  # its own dtypes
    else:
        unet_ldm = strip_prefix(state, UNET_PREFIX)
        unet_config = infer_unet_config(unet_ldm, family, pooled_dim)
        unet = build_with_weights(lambda: UNet2DConditionModel(**unet_config),
                             convert_ldm_unet_checkpoint(state, unet_config), "UNet", name, placement.device,
                             placement.unet_dtype)

    vae_config = infer_vae_config(strip_prefix(state, VAE_PREFIX), family)
    vae = build_with_weights(lambda: AutoencoderKL(**vae_config), convert_ldm_vae_checkpoint(state, vae_config), "VAE",
                        name, placement.device, placement.vae_dtype)

    return LoadedCheckpoint(
        model=ModelHost(unet=unet, family=family, noise_schedule=dict(SD15_NOISE_SCHEDULE)),
        clip=ClipHost(tokenizer=tokenizer, text_encoders=encoders, family=family),
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
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (path / part).is_dir():
            raise CheckpointFormatError(f"{path}: diffusers folder has no '{part}/' subfolder")
    # read straight into the target dtype (one host copy), then moved to the device
    device, text_dtype = placement.device, placement.text_encoder_dtype
    unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True,
                                                torch_dtype=placement.unet_dtype).to(device).eval()
    vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True,
                                        torch_dtype=placement.vae_dtype).to(device).eval()
    tokenizer = _load_tokenizer(path / "tokenizer")
    encoders = [CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder", local_files_only=True,
                                              dtype=text_dtype).to(device).eval()]
    if family == "sdxl":
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(str(path), subfolder="text_encoder_2", local_files_only=True,
                                                        dtype=text_dtype).to(device).eval()
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
