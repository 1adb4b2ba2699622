"""Parse the tensors of a LoRA file into adapters: module name -> low-rank factors.

Recognised layouts (any may carry a per-module ``alpha``; a missing alpha means alpha = rank):
- kohya: ``lora_unet_<module path with '_'>.lora_down.weight / .lora_up.weight / .alpha``,
  text encoders ``lora_te_`` (SD1.5) or ``lora_te1_`` / ``lora_te2_`` (SDXL); conv LoRA
  (LoCon) with a (r, in, kh, kw) down and a (out, r, 1, 1) up.
- diffusers / PEFT: ``unet.<path>.lora_A.weight / .lora_B.weight`` (optionally with a PEFT
  adapter-name segment, ``lora_A.default.weight``), ``<path>.lora.down/up.weight``,
  ``<path>.lora_linear_layer.down/up.weight``, old attention processors
  ``<attn>.processor.to_q_lora.down.weight``; prefixes ``unet.``, ``base_model.model.``,
  ``text_encoder.`` / ``text_encoder_2.``.
- LDM / ComfyUI: ``diffusion_model.<LDM path>.<any of the suffixes above>``.
- LyCORIS, as ComfyUI loads it (lycoris.py): LoHa ``hada_w1_a/b, hada_w2_a/b[, hada_t1/t2]``,
  LoKr ``lokr_w1 | lokr_w1_a/b, lokr_w2 | lokr_w2_a/b[, lokr_t2]``, full ``diff`` / ``diff_b``,
  ``dora_scale`` (DoRA) on a LoRA / LoHa / LoKr, LoRA bias ``lora_up.bias`` / ``lora_B.bias``;
  kohya ``lora_unet_`` / SimpleTuner ``lycoris_`` names or any prefix above. Such modules are
  ``AdapterModule`` values in ``LoraFile.unet`` (plain LoRAs stay ``LoraFactors``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .lycoris import AdapterModule, build_module
from .safetensors_io import LoraFileError, load_tensor_file

# (regex on the key, role) - the module path is group 1; roles: down / up / alpha
_SUFFIXES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_A(?:\.[A-Za-z0-9_\-]+)?\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_B(?:\.[A-Za-z0-9_\-]+)?\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_linear_layer\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_linear_layer\.up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"^(.+)_lora\.down\.weight$"), "down"),
    (re.compile(r"^(.+)_lora\.up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_up\.bias$"), "bias"),
    (re.compile(r"^(.+)\.lora_B(?:\.[A-Za-z0-9_\-]+)?\.bias$"), "bias"),
    (re.compile(r"^(.+)\.(hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|dora_scale|diff|diff_b)$"), ""),
    (re.compile(r"^(.+)\.alpha$"), "alpha"),
]
# Keys of other adapter types: refused by name rather than silently ignored.
_UNSUPPORTED = re.compile(r"(\.oft_|\.boft_|\.lora_mid\.|\.w_norm$|\.b_norm$|\.set_weight$|\.reshape_weight$)")
# Prefix -> (component, whether the module path is kohya-flattened with '_')
_PREFIXES: list[tuple[str, str, bool]] = [
    ("lora_unet_", "unet", True),
    ("lora_te1_", "te1", True),
    ("lora_te2_", "te2", True),
    ("lora_te_", "te1", True),
    ("lycoris_", "unet", True),
    ("base_model.model.unet.", "unet", False),
    ("base_model.model.", "unet", False),
    ("unet.", "unet", False),
    ("model.diffusion_model.", "unet", False),
    ("diffusion_model.", "unet", False),
    ("text_encoder_2.", "te2", False),
    ("text_encoder.", "te1", False),
    ("te2.", "te2", False),
    ("te1.", "te1", False),
    ("te.", "te1", False),
]
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")


@dataclass
class LoraFactors:
    """One module's LoRA: delta W = (alpha / rank) * up @ down (conv: flattened, see `delta`)."""

    key: str  # the module's key prefix in the file, for messages
    down: torch.Tensor  # (r, in) or (r, in, kh, kw)
    up: torch.Tensor  # (out, r) or (out, r, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def delta_shape(self) -> tuple[int, ...]:
        """Shape of the weight this LoRA patches: (out, in) or (out, in, kh, kw)."""
        return (int(self.up.shape[0]), *map(int, self.down.shape[1:]))

    def delta(self) -> torch.Tensor:
        """The full fp32 weight delta (for tests and references; the patcher never builds all at once)."""
        up = self.up.float().flatten(1)
        down = self.down.float().flatten(1)
        return (self.scale * (up @ down)).reshape(self.delta_shape)


@dataclass
class LoraFile:
    """A parsed LoRA file. ``unet`` maps module paths (as named in the file, prefix removed) to
    factors; ``flat_names`` is True for kohya '_'-flattened paths. ``text_encoders`` holds the
    text-encoder adapters ('te1', 'te2') in the same form, for a host to apply to its CLIP."""

    path: str
    format: str
    unet: dict[str, LoraFactors]
    flat_names: bool
    text_encoders: dict[str, dict[str, LoraFactors]] = field(default_factory=dict)
    text_encoder_flat_names: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    ignored_keys: list[str] = field(default_factory=list)  # keys that are not LoRA down/up/alpha

    @property
    def name(self) -> str:
        return Path(self.path).name


def load_lora(path: str | Path) -> LoraFile:
    """Read and parse a LoRA file (safetensors, or weights-only pickle)."""
    tensors, metadata = load_tensor_file(path)
    return parse_lora(tensors, str(path), metadata)


def _split_key(key: str) -> tuple[str, str] | None:
    for pattern, role in _SUFFIXES:
        m = pattern.match(key)
        if m:
            return m.group(1), role or m.group(2)
    return None


def _component(module: str) -> tuple[str, str, bool] | None:
    for prefix, component, flat in _PREFIXES:
        if module.startswith(prefix):
            name = module[len(prefix) :]
            if not flat:
                name = _PROCESSOR.sub(lambda m: "." + m.group(1) + (".0" if m.group(1) == "to_out" else ""), name)
            return component, name, flat
    return None


def _format_name(keys: list[str]) -> str:
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "kohya"
    if any("diffusion_model." in k for k in keys):
        return "ldm"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    return "diffusers"


def parse_lora(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> LoraFile:
    """Group a LoRA state dict into per-module factors, checking ranks and shapes."""
    if not tensors:
        raise LoraFileError(f"LoRA file '{path}' contains no tensors.")
    parts: dict[tuple[str, str, bool], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        if _UNSUPPORTED.search(key):
            raise LoraFileError(
                f"LoRA file '{path}': key '{key}' belongs to an adapter type this loader does not support "
                "(OFT/BOFT, LoCon Tucker mid, norm diffs or set_weight); supported: LoRA / LoCon, LoHa, LoKr, "
                "DoRA, full diff, LoRA bias."
            )
        split = _split_key(key)
        comp = _component(split[0]) if split else None
        if comp is None:
            unknown.append(key)
            continue
        slot = parts.setdefault(comp, {})
        if split[1] in slot:
            raise LoraFileError(f"LoRA file '{path}': module '{split[0]}' has two '{split[1]}' tensors.")
        slot[split[1]] = tensor
    if not parts:
        raise LoraFileError(
            f"LoRA file '{path}' is not a LoRA: none of its {len(tensors)} keys (first: '{next(iter(tensors))}') "
            "is a LoRA / LyCORIS key of the UNet or a text encoder."
        )

    lora = LoraFile(
        path=path,
        format=_format_name(list(tensors)),
        unet={},
        flat_names=False,
        metadata=dict(metadata or {}),
        ignored_keys=unknown,
    )
    unet_flat: set[bool] = set()
    te_flat: set[bool] = set()
    for (component, name, flat), slot in parts.items():
        factors = _make_factors(path, name, slot)
        if factors is None:
            continue
        if component == "unet":
            target, seen = lora.unet, unet_flat
        else:
            target, seen = lora.text_encoders.setdefault(component, {}), te_flat
        if name in target:
            raise LoraFileError(f"LoRA file '{path}': module '{name}' appears twice under different key styles.")
        target[name] = factors
        seen.add(flat)
    if len(unet_flat) > 1 or len(te_flat) > 1:
        raise LoraFileError(f"LoRA file '{path}' mixes kohya '_' names and dotted names for the same component.")
    lora.flat_names = unet_flat == {True}
    lora.text_encoder_flat_names = te_flat == {True}
    if not lora.unet and not lora.text_encoders:
        raise LoraFileError(f"LoRA file '{path}' is not a LoRA: it has alpha keys but no down/up weights.")
    return lora


def _make_factors(path: str, name: str, slot: dict[str, torch.Tensor]) -> LoraFactors | AdapterModule | None:
    """Check one module's tensors and build its factors (None: only an alpha, ignored); anything
    beyond plain down/up/alpha is a LyCORIS AdapterModule."""
    if set(slot) - {"down", "up", "alpha"}:
        return build_module(path, name, slot)
    if "down" not in slot or "up" not in slot:
        if set(slot) == {"alpha"}:
            return None
        missing = "up" if "down" in slot else "down"
        raise LoraFileError(f"LoRA file '{path}': module '{name}' has no '{missing}' weight.")
    down, up = slot["down"], slot["up"]
    if not (down.is_floating_point() and up.is_floating_point()):
        raise LoraFileError(f"LoRA file '{path}': module '{name}' has non-float factors ({down.dtype}, {up.dtype}).")
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        raise LoraFileError(
            f"LoRA file '{path}': module '{name}' has factors of shapes {tuple(down.shape)} (down) and "
            f"{tuple(up.shape)} (up); expected 2-D linear or 4-D conv factors."
        )
    if up.shape[1] != down.shape[0] or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise LoraFileError(
            f"LoRA file '{path}': module '{name}' has mismatched factors: down {tuple(down.shape)}, "
            f"up {tuple(up.shape)} (up must be (out, rank[, 1, 1]) with rank = down.shape[0])."
        )
    rank = int(down.shape[0])
    if rank == 0:
        raise LoraFileError(f"LoRA file '{path}': module '{name}' has rank 0.")
    alpha = float(slot["alpha"].float().reshape(-1)[0]) if "alpha" in slot else float(rank)
    if "alpha" in slot and slot["alpha"].numel() != 1:
        raise LoraFileError(f"LoRA file '{path}': module '{name}' has a non-scalar alpha {tuple(slot['alpha'].shape)}.")
    return LoraFactors(key=name, down=down, up=up, alpha=alpha)
