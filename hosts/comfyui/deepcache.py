"""DeepCache on ComfyUI's UNet (`openaimodel.UNetModel`) through ComfyUI's model wrappers.

`apply_deepcache(model, settings)` returns a clone of the MODEL with two wrappers under one key:
- SAMPLER_SAMPLE (the start of one sampling run) puts a fresh run state (the step schedule, the
  sigma -> step map, each stream's features) into the run's own `transformer_options`; nothing is
  kept on the model or the wrapper, so nothing leaks across runs, sizes or batch sizes;
- DIFFUSION_MODEL (each UNet call) decides full or partial from that state and, for this call
  only, swaps the blocks a partial step skips for small shims, then runs ComfyUI's own forward
  loop (control, patches and transformer_options work as usual) and puts the blocks back.
A full call's shims run the original layers and record what a partial call needs (the shape of
each skipped block's output and the deep feature entering the first output block that still
runs); a partial call's shims replay them instead of computing.

`skip_plan` maps a cache branch onto LDM blocks from plain structural tags, so it is shared by
the host and by tests that cross-check it against the diffusers UNet's skipped layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import (
    Downsample,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
)

from ...feature_cache.branch import cache_point, down_layer_skipped, up_layer_skipped
from ...feature_cache.run import CachedCall, FeatureStreams, SigmaSteps

KEY = "lcm_accel_deepcache"
MIDDLE = ("middle", 0)
LAYER, DOWN, UP = "layer", "down", "up"

BlockId = tuple[str, int]  # ComfyUI's own naming: ("input", i), ("middle", 0), ("output", j)


# --- which blocks a partial call skips (pure Python) ------------------------------------------------
@dataclass(frozen=True)
class SkipPlan:
    """The LDM blocks a partial call skips for one branch, and where the deep feature comes from."""

    skipped: tuple[BlockId, ...]  # in execution order; the middle block is always skipped
    deep: BlockId  # the last skipped block: its output enters the first output block that runs
    num_levels: int
    layers_per_level: int


def _output_levels(output_tags: Sequence[str]) -> list[int]:
    """Lengths of the output-block groups, deepest level first; an UP block ends a group."""
    groups, count = [], 0
    for tag in output_tags:
        count += 1
        if tag == UP:
            groups.append(count)
            count = 0
    groups.append(count)
    return groups


def skip_plan(input_tags: Sequence[str], output_tags: Sequence[str], branch: int) -> SkipPlan:
    """Which blocks a partial call skips for DeepCache branch `branch` (cache_depth).

    `input_tags[i]` is DOWN for an input block holding a downsampler, else LAYER (block 0, conv_in,
    always runs); `output_tags[j]` is UP for an output block holding an upsampler, else LAYER.
    Down path: per level, the layer blocks are slots 0..n-1 and the downsampler block is slot n.
    Up path: groups per level, deepest first, each layer counted from the end of its group.
    """
    if len(input_tags) != len(output_tags):
        raise ValueError(
            f"DeepCache: the UNet has {len(input_tags)} input blocks but {len(output_tags)} "
            "output blocks; it needs one skip connection per output block"
        )
    groups = _output_levels(output_tags)
    num_levels = input_tags.count(DOWN) + 1
    if len(groups) != num_levels or len(set(groups)) != 1:
        raise ValueError(
            f"DeepCache: the UNet's up path has levels of {groups} blocks for {num_levels} down "
            "levels; it needs the same number of blocks in every up level"
        )
    layers = groups[0]
    try:
        point = cache_point(branch, num_levels, layers)
    except ValueError:
        raise ValueError(
            f"DeepCache: cache_depth {branch} is too deep for this UNet ({num_levels} levels of "
            f"{layers} layers): choose cache_depth 0..{num_levels * layers - 1}"
        ) from None
    skipped: list[BlockId] = []
    level, slot = 0, 0
    for index, tag in enumerate(input_tags[1:], start=1):
        if down_layer_skipped(point, level, slot):
            skipped.append(("input", index))
        level, slot = (level + 1, 0) if tag == DOWN else (level, slot + 1)
    skipped.append(MIDDLE)
    index = 0
    for group, count in enumerate(groups):
        for position in range(count):
            if up_layer_skipped(point, num_levels - 1 - group, count - 1 - position):
                skipped.append(("output", index))
            index += 1
    _check_skips(skipped, len(input_tags))
    return SkipPlan(tuple(skipped), skipped[-1], num_levels, layers)


def _check_skips(skipped: list[BlockId], num_blocks: int) -> None:
    """Every output block that runs must read the skip connection of an input block that runs."""
    gone = set(skipped)
    for j in range(num_blocks):
        if ("output", j) not in gone and ("input", num_blocks - 1 - j) in gone:
            raise ValueError(
                f"DeepCache: output block {j} runs but reads input block {num_blocks - 1 - j}, "
                "which a partial step skips; this UNet's layout does not suit DeepCache"
            )


# --- the UNet's structure ---------------------------------------------------------------------------
def _has(block: torch.nn.Module, kind: type) -> bool:
    return any(isinstance(layer, kind) for layer in block)


def unet_skip_plan(unet: UNetModel, branch: int) -> SkipPlan:
    """`skip_plan` for this UNetModel's blocks."""
    if unet.middle_block is None:
        raise ValueError("DeepCache: this UNet has no middle block; it needs one to cache deep features")
    if any(getattr(layer, "updown", False) for block in (*unet.input_blocks, *unet.output_blocks) for layer in block):
        raise ValueError("DeepCache: UNets that resample inside res blocks (resblock_updown) are not supported")
    input_tags = [DOWN if _has(block, Downsample) else LAYER for block in unet.input_blocks]
    output_tags = [UP if _has(block, Upsample) else LAYER for block in unet.output_blocks]
    return skip_plan(input_tags, output_tags, branch)


def _get_block(unet: UNetModel, where: BlockId) -> torch.nn.Module:
    kind, index = where
    return unet.middle_block if kind == "middle" else getattr(unet, f"{kind}_blocks")[index]


def _set_block(unet: UNetModel, where: BlockId, block: torch.nn.Module) -> None:
    kind, index = where
    if kind == "middle":
        unet.middle_block = block
    else:
        getattr(unet, f"{kind}_blocks")[index] = block


@contextmanager
def _blocks_replaced(unet: UNetModel, shims: dict[BlockId, torch.nn.Module]) -> Iterator[None]:
    """Swap blocks for shims for the duration of one call; the originals come back whatever happens."""
    originals: dict[BlockId, torch.nn.Module] = {}
    try:
        for where, shim in shims.items():
            originals[where] = _get_block(unet, where)
            _set_block(unet, where, shim)
        yield
    finally:
        for where, block in originals.items():
            _set_block(unet, where, block)


# --- shims ------------------------------------------------------------------------------------------
class _Tap(TimestepBlock):
    """Last layer of a skipped block on a full call: records what leaves the block, changes nothing."""

    def __init__(self, record: Callable[[torch.Tensor], None]):
        super().__init__()
        self.record = record

    def forward(self, x, emb):
        self.record(x)
        return x


class _Replay(TimestepBlock):
    """A skipped block on a partial call: returns what `make(x)` gives instead of computing.

    It also advances ComfyUI's transformer counter by the block's SpatialTransformers, as the block
    would have (GLIGEN and other attention patches count on it).
    """

    def __init__(self, make: Callable[[torch.Tensor], torch.Tensor], transformers: int, options: dict):
        super().__init__()
        self.make, self.transformers, self.options = make, transformers, options

    def forward(self, x, emb):
        if self.transformers and "transformer_index" in self.options:
            self.options["transformer_index"] += self.transformers
        return self.make(x)


def _full_shims(unet: UNetModel, plan: SkipPlan, features: dict[str, Any]) -> dict[BlockId, torch.nn.Module]:
    """Each skipped block's layers plus a tap: output shapes, and the deep feature itself, go to `features`."""
    shapes: dict[BlockId, torch.Size] = {}
    features["shapes"] = shapes

    def recorder(where: BlockId) -> Callable[[torch.Tensor], None]:
        def record(x: torch.Tensor) -> None:
            shapes[where] = x.shape
            if where == plan.deep:  # a copy: ControlNet's middle residual and FreeU change h in place
                features["deep"] = x.clone()

        return record

    return {where: TimestepEmbedSequential(*_get_block(unet, where), _Tap(recorder(where))) for where in plan.skipped}


def _partial_shims(
    unet: UNetModel, plan: SkipPlan, features: dict[str, Any], options: dict
) -> dict[BlockId, torch.nn.Module]:
    """Each skipped block as a replay of `features`: the deep feature, zeros of the right shape elsewhere."""

    def replay(where: BlockId) -> Callable[[torch.Tensor], torch.Tensor]:
        if where == plan.deep:  # a clone again, for the same reason
            return lambda x: features["deep"].clone()
        shape = features["shapes"][where]  # only feeds other skipped blocks and their concatenations
        return lambda x: torch.zeros(shape, dtype=x.dtype, device=x.device)

    def transformers(where: BlockId) -> int:
        return sum(isinstance(layer, SpatialTransformer) for layer in _get_block(unet, where))

    return {
        where: TimestepEmbedSequential(_Replay(replay(where), transformers(where), options)) for where in plan.skipped
    }


# --- the wrappers -----------------------------------------------------------------------------------
class RunState:
    """One sampling run's DeepCache state: the sigma -> step map and each stream's features."""

    def __init__(self, full_step_flags: Sequence[bool], sigmas: Sequence[float]):
        self.steps = SigmaSteps(sigmas)
        self.streams = FeatureStreams(full_step_flags)

    @property
    def stats(self) -> dict[str, int]:
        """Calls run full, partial, and full because the input changed (`forced_full`)."""
        return self.streams.stats


def _start_run(settings, executor, guider, sigmas, extra_args, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: a fresh run state in this run's transformer_options."""
    if len(sigmas) >= 2:
        options = extra_args["model_options"].setdefault("transformer_options", {})
        options[KEY] = RunState(settings.full_step_flags(len(sigmas) - 1), [float(s) for s in sigmas])
    return executor(guider, sigmas, extra_args, *args, **kwargs)


def _cached_unet_call(plan: SkipPlan, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: one UNet call, full or partial as the run state says."""
    run: RunState | None = transformer_options.get(KEY)
    if run is None or "sigmas" not in transformer_options:  # not inside a sampling run: plain and exact
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    key = tuple(transformer_options.get("uuids", ()))  # which conds are in this batch
    stream, step = run.steps.locate(key, float(transformer_options["sigmas"].flatten()[0]))
    call: CachedCall = run.streams.begin(stream, (tuple(x.shape), x.dtype, x.device), step)
    unet = executor.class_obj
    if call.partial:
        shims = _partial_shims(unet, plan, call.features, transformer_options)
    else:
        shims = _full_shims(unet, plan, call.features)
    with _blocks_replaced(unet, shims):
        output = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    run.streams.complete(call)
    return output


def apply_deepcache(model, settings):
    """A clone of `model` (a ModelPatcher of an SD-style UNet) with DeepCache on for `settings`.

    Refuses other diffusion models and branches deeper than the UNet has. Applying it again
    replaces the earlier DeepCache wrappers (the last DeepCache node in a chain wins).
    """
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(unet, UNetModel):
        raise ValueError(
            f"DeepCache: the model's diffusion model is {type(unet).__name__}, not an SD1.x/SD2/SDXL "
            "UNet (openaimodel.UNetModel); connect the DeepCache node to such a MODEL"
        )
    plan = unet_skip_plan(unet, settings.branch)
    clone = model.clone()
    wrappers = comfy.patcher_extension.WrappersMP
    sample, diffusion = wrappers.SAMPLER_SAMPLE, wrappers.DIFFUSION_MODEL
    clone.remove_wrappers_with_key(sample, KEY)
    clone.remove_wrappers_with_key(diffusion, KEY)
    clone.add_wrapper_with_key(sample, KEY, functools.partial(_start_run, settings))
    clone.add_wrapper_with_key(diffusion, KEY, functools.partial(_cached_unet_call, plan))
    return clone
