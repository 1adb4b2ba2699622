"""LoRA on the standalone host: patch lists on MODEL / CLIP, brought into the shared weights lazily.

MODEL and CLIP clones share their UNet / text encoders (the checkpoint loader caches one set
of modules per file), so the weights cannot tell which MODEL they belong to. As in ComfyUI's
ModelPatcher, the *patch list* on each MODEL / CLIP is the truth: `add_loras` only records
(LoRA, weight) entries on a clone, and `activate_patches` makes the shared weights equal
base + exactly that MODEL's entries right before the UNet runs. Each module gets ONE
`LoraPatcher`, held here in a weak table keyed by the module (the module is not touched; a copy
of it starts without one), which remembers what is applied:

    same files, same weights, same rank  -> nothing to do (a seed-only change costs nothing)
    same files, other weights            -> `reweight` (no file re-read, no re-planning)
    anything else                        -> `apply` (restores exactly first, then patches)
    no entries                           -> `restore` (bit-exact base weights)

All entries of a MODEL become one combined low-rank patch per weight (factors concatenated,
see `lora_merge.mix_cat`); the same file added twice is one adapter with the summed weight.
Rank rule: `rank` (SVD re-compression of the combined patch) is set per `add_loras` call; all
entries that set one must agree, otherwise `add_loras` refuses (a MODEL has one combined patch,
so it can have only one rank). Entries without a rank follow the one that is set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from weakref import WeakKeyDictionary

import torch

from ..lora_merge import LoraFile, LoraPatcher, LoraPatchError
from ..quantize import refuse_lora_on_quantized
from .lora_files import load_lora_cached, merge_duplicate_files
from .model_paths import get_model_paths
from .model_types import ClipHost, ModelHost

TEXT_ENCODER_COMPONENTS = ("te1", "te2")  # LoraFile.text_encoders keys, in ClipHost.text_encoders order

Adapters = Sequence[tuple[LoraFile, float]]


@dataclass(frozen=True, eq=False)
class LoraEntry:
    """One LoRA recorded on a MODEL's patch list (no weight is touched when it is recorded)."""

    lora: LoraFile
    weight: float
    rank: int | None = None


@dataclass(frozen=True, eq=False)
class ClipLoraEntry:
    """One LoRA recorded on a CLIP's patch list; applies the file's text-encoder modules."""

    lora: LoraFile
    weight: float


# --------------------------------------------------------------------------- files
def load_lora_file(name: str) -> LoraFile:
    """A file from the models dir's `loras` folder (harness ModelPaths), read once and cached by
    (path, mtime): the same file gives the same LoraFile object, so an unchanged graph re-patches nothing."""
    return load_lora_cached(get_model_paths().get_full_path("loras", name))


# --------------------------------------------------------------------------- per-module state
@dataclass
class _ModuleLoraState:
    """The one patcher of a shared module and what it has applied (source files, weights, rank)."""

    patcher: LoraPatcher
    sources: tuple[LoraFile, ...] = ()
    weights: tuple[float, ...] = ()
    rank: int | None = None

    def forget(self) -> None:
        self.sources, self.weights, self.rank = (), (), None


_STATES: WeakKeyDictionary[torch.nn.Module, _ModuleLoraState] = WeakKeyDictionary()


def _module_state(module: torch.nn.Module) -> _ModuleLoraState:
    """The module's patcher and record, created on first use (one per module, dropped with it)."""
    state = _STATES.get(module)
    if state is None:
        state = _STATES[module] = _ModuleLoraState(LoraPatcher(module))
    return state


def has_lora_state(module: torch.nn.Module) -> bool:
    """Whether `module` ever had a LoRA patcher (a never-patched module has none)."""
    return module in _STATES


def patcher_of(module: torch.nn.Module) -> LoraPatcher:
    """The LoraPatcher that owns `module`'s LoRA patches (for inspection and tests)."""
    return _module_state(module).patcher


def _bring_in_line(
    module: torch.nn.Module,
    sources: tuple[LoraFile, ...],
    weights: tuple[float, ...],
    rank: int | None,
    adapters: Callable[[], list[tuple[LoraFile, float]]],
) -> None:
    """Make `module`'s weights base + these adapters with the least work (see the module docstring).
    `sources` identify the files (compared by identity); `adapters()` builds what the patcher applies."""
    if not sources and module not in _STATES:
        return  # never patched: nothing to restore, no patcher needed
    state = _module_state(module)
    patcher = state.patcher
    if not sources:
        if patcher.is_applied:
            patcher.restore()
        state.forget()
        return
    same_files = (
        patcher.is_applied
        and state.rank == rank
        and len(state.sources) == len(sources)
        and all(a is b for a, b in zip(state.sources, sources))
    )
    if same_files:
        if state.weights != weights:
            patcher.reweight(list(weights))
            state.weights = weights
        return
    try:
        patcher.apply(adapters(), rank=rank)
    except BaseException:
        if not patcher.is_applied:  # a failed plan leaves the old patch; a failed write restores all
            state.forget()
        raise
    state.sources, state.weights, state.rank = sources, weights, rank


def _check_pairs(loras: Sequence[tuple[LoraFile, float]], what: str) -> None:
    for n, pair in enumerate(loras):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], LoraFile)):
            raise TypeError(f"{what}: entry {n} must be a (LoraFile, weight) pair (use load_lora_file), got {pair!r}")
        if not isinstance(pair[1], (int, float)) or pair[1] != pair[1] or abs(pair[1]) == float("inf"):
            raise LoraPatchError(f"{what}: weight for LoRA '{pair[0].name}' must be a finite number, got {pair[1]!r}")


def _dry_run(patcher: LoraPatcher, adapters: Adapters) -> None:
    """Resolve and check the adapters against the patcher's module without touching a weight
    (the same check `apply` does first)."""
    patcher.check(list(adapters), strict=True)


def _entries(patches: list, kind: type, what: str, adder: str) -> list:
    """The patch list, refusing anything this host does not know how to apply."""
    for entry in patches:
        if not isinstance(entry, kind):
            raise TypeError(
                f"{what} patch list holds a {type(entry).__name__}; the standalone host only knows LoRA entries "
                f"(add them with hosts.standalone.lora.{adder})"
            )
    return list(patches)


# --------------------------------------------------------------------------- MODEL
def _model_entries(model: ModelHost) -> list[LoraEntry]:
    return _entries(model.patches, LoraEntry, "MODEL", "add_loras")


def _model_rank(entries: Sequence[LoraEntry]) -> int | None:
    """The one re-compression rank of a MODEL's combined patch (refuses conflicting ranks)."""
    ranked = [(e.lora.name, e.rank) for e in entries if e.rank is not None]
    ranks = {r for _, r in ranked}
    if len(ranks) > 1:
        listed = ", ".join(f"'{name}' rank {r}" for name, r in ranked)
        raise LoraPatchError(
            f"This MODEL's LoRAs ask for different re-compression ranks ({listed}); all its LoRAs become one "
            "combined patch, which has one rank: give them the same rank or leave it unset on all but one."
        )
    return ranks.pop() if ranks else None


def add_loras(model: ModelHost, loras: Sequence[tuple[LoraFile, float]], rank: int | None = None) -> ModelHost:
    """A clone of `model` with these LoRAs recorded in its patch list (no weight is touched here).

    Each file is checked against the model's UNet now (names, shapes, family), so a LoRA that
    cannot be applied is refused here, naming the file, rather than later at the sampler.
    LoRAs with no UNet modules (text-encoder-only files) add nothing to a MODEL."""
    if not isinstance(model, ModelHost):
        raise TypeError(f"add_loras needs a MODEL (ModelHost), got {type(model).__name__}")
    _check_pairs(loras, "add_loras")
    refuse_lora_on_quantized(model.unet)
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise LoraPatchError(f"add_loras: rank must be a positive integer or None, got {rank!r}")
    new = [LoraEntry(lora, float(weight), rank) for lora, weight in loras if lora.unet]
    entries = _model_entries(model) + new
    _model_rank(entries)
    patcher = _module_state(model.unet).patcher
    for entry in new:
        _dry_run(patcher, [(entry.lora, entry.weight)])
    clone = model.clone()
    clone.patches.extend(new)
    return clone


def activate_patches(model: ModelHost) -> None:
    """Make the shared UNet's weights equal base + exactly this MODEL's patches, via ONE LoraPatcher per
    UNet: nothing to do if already so; `reweight` if only the weights changed; restore + apply otherwise;
    restore if the model has no patches. Called by every sampling entry point before the first UNet call.

    A failed apply (bad file, wrong family) raises naming the file and leaves the weights as they were."""
    entries = _model_entries(model)
    rank = _model_rank(entries)
    sources, weights = merge_duplicate_files([(e.lora, e.weight) for e in entries])
    _bring_in_line(model.unet, sources, weights, rank, lambda: list(zip(sources, weights)))


# --------------------------------------------------------------------------- CLIP
def _has_text_model_level(encoder: torch.nn.Module) -> bool:
    """transformers' CLIPTextModel (v5) names its parameters `encoder.layers...`, while
    CLIPTextModelWithProjection (and v4 CLIPTextModel) use `text_model.encoder.layers...`."""
    return any(name.startswith("text_model.") for name, _ in encoder.named_parameters())


def _encoder_view(lora: LoraFile, component: str, has_level: bool) -> LoraFile:
    """The file's `component` text-encoder modules as a LoraFile the patcher can apply to one encoder,
    with the `text_model` level of the module names matched to the encoder's own names."""
    flat = lora.text_encoder_flat_names
    level = "text_model_" if flat else "text_model."
    renamed = {}
    for name, factors in lora.text_encoders[component].items():
        if name.startswith(level) and not has_level:
            name = name[len(level) :]
        elif not name.startswith(level) and has_level:
            name = level + name
        renamed[name] = factors
    return LoraFile(path=f"{lora.path} [{component}]", format=lora.format, unet=renamed, flat_names=flat)


def _clip_entries(clip: ClipHost) -> list[ClipLoraEntry]:
    return _entries(clip.patches, ClipLoraEntry, "CLIP", "add_clip_loras")


def add_clip_loras(clip: ClipHost, loras: Sequence[tuple[LoraFile, float]]) -> ClipHost:
    """A clone of `clip` with these LoRAs' text-encoder modules recorded in its patch list.

    kohya `lora_te_` / `lora_te1_` and diffusers `text_encoder.` go to the first encoder,
    `lora_te2_` / `text_encoder_2.` to the second (SDXL's OpenCLIP-G). Each file is checked
    against the encoders now. Files without text-encoder modules add nothing."""
    if not isinstance(clip, ClipHost):
        raise TypeError(f"add_clip_loras needs a CLIP (ClipHost), got {type(clip).__name__}")
    _check_pairs(loras, "add_clip_loras")
    new = [ClipLoraEntry(lora, float(weight)) for lora, weight in loras if lora.text_encoders]
    _clip_entries(clip)
    for entry in new:
        for component in entry.lora.text_encoders:
            if component not in TEXT_ENCODER_COMPONENTS[: len(clip.text_encoders)]:
                raise LoraPatchError(
                    f"LoRA '{entry.lora.path}' has weights for text encoder '{component}', but this {clip.family} "
                    f"CLIP has {len(clip.text_encoders)} text encoder(s): is the LoRA for another model family?"
                )
            encoder = clip.text_encoders[TEXT_ENCODER_COMPONENTS.index(component)]
            view = _encoder_view(entry.lora, component, _has_text_model_level(encoder))
            _dry_run(_module_state(encoder).patcher, [(view, entry.weight)])
    clone = clip.clone()
    clone.patches.extend(new)
    return clone


def add_clip_loras_by_name(clip: ClipHost, loras: Sequence[tuple[str, float]]) -> ClipHost:
    """The host operation behind the pack's LoRA nodes' CLIP output: the named files (models dir's
    `loras` folder) at their clip strengths; strength 0 adds nothing, and with nothing to add the input
    CLIP itself is returned (as the ComfyUI host does)."""
    pairs = [(load_lora_file(name), float(strength)) for name, strength in loras if float(strength) != 0.0]
    if not any(lora.text_encoders for lora, _ in pairs):
        return clip
    return add_clip_loras(clip, pairs)


def activate_clip_patches(clip: ClipHost) -> None:
    """Make the shared text encoders' weights equal base + exactly this CLIP's patches (one patcher
    per encoder, same rules as `activate_patches`). Called before encoding a prompt."""
    entries = _clip_entries(clip)
    for index, encoder in enumerate(clip.text_encoders):
        component = TEXT_ENCODER_COMPONENTS[index]
        pairs = [(e.lora, e.weight) for e in entries if component in e.lora.text_encoders]
        sources, weights = merge_duplicate_files(pairs)
        _bring_in_line(
            encoder, sources, weights, None, partial(_encoder_adapters, encoder, component, sources, weights)
        )


def _encoder_adapters(
    encoder: torch.nn.Module, component: str, sources: tuple[LoraFile, ...], weights: tuple[float, ...]
) -> list[tuple[LoraFile, float]]:
    """The (view, weight) pairs the encoder's patcher applies for these files."""
    level = _has_text_model_level(encoder)
    return [(_encoder_view(lora, component, level), w) for lora, w in zip(sources, weights)]
