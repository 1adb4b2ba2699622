"""DeepCache on a diffusers `UNet2DConditionModel`: skip the deep part of the UNet on partial steps.

`DeepCacheUNet(unet, branch, full_step_flags)` is a context manager. While it is active, every
call of the UNet is either *full* (the whole UNet runs and the outputs of the modules a partial
step skips are stored) or *partial* (those modules return the stored outputs instead of running).
Only the outermost skipped modules are patched (whole blocks where a whole block is skipped),
by setting an instance `forward`; leaving the block puts back exactly what was there before.

Per-run state: the step counter and the stored features live in this object, one slot per chunk
key, and are dropped on enter and on exit. A partial step whose input differs in shape, dtype or
device from the features' full step is run as a full step instead: reusing them would be wrong
(or crash), and recomputing gives exactly the uncached result, so a host that changes batch size
or resolution mid-run (ComfyUI packs cond/uncond differently under memory pressure) still gets
correct images; such steps are counted in `stats["forced_full"]`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .branch import CachePoint, cache_point, down_layer_skipped, up_layer_skipped
from .run import CachedCall, FeatureStreams

_ABSENT = object()


def unet_cache_point(unet: torch.nn.Module, branch: int) -> CachePoint:
    """The cache point of `branch` on this UNet; layers per level = res layers of an up block."""
    counts = {len(block.resnets) for block in unet.up_blocks}
    if len(counts) != 1:
        raise ValueError(f"DeepCache needs the same number of res layers in every up block, got {sorted(counts)}")
    if len(unet.down_blocks) != len(unet.up_blocks):
        raise ValueError(f"UNet has {len(unet.down_blocks)} down blocks but {len(unet.up_blocks)} up blocks")
    return cache_point(branch, len(unet.up_blocks), counts.pop())


def _down_slots(block: torch.nn.Module) -> list[tuple[str, int]]:
    """(attribute path, slot) of a down block's layers; the downsampler takes the slot after the res layers."""
    slots = [(f"resnets.{i}", i) for i in range(len(block.resnets))]
    slots += [(f"attentions.{i}", i) for i in range(len(getattr(block, "attentions", None) or []))]
    slots += [(f"downsamplers.{i}", len(block.resnets)) for i in range(len(getattr(block, "downsamplers", None) or []))]
    return slots


def _up_slots(block: torch.nn.Module) -> list[tuple[str, int]]:
    """(attribute path, layer counted from the end) of an up block's layers; upsamplers count as layer 0."""
    last = len(block.resnets) - 1
    slots = [(f"resnets.{i}", last - i) for i in range(len(block.resnets))]
    slots += [(f"attentions.{i}", last - i) for i in range(len(getattr(block, "attentions", None) or []))]
    slots += [(f"upsamplers.{i}", 0) for i in range(len(getattr(block, "upsamplers", None) or []))]
    return slots


def skipped_modules(unet: torch.nn.Module, branch: int) -> list[str]:
    """Qualified names of the outermost modules a partial step skips (whole blocks where possible)."""
    point = unet_cache_point(unet, branch)
    names: list[str] = []
    for level, block in enumerate(unet.down_blocks):
        skipped = [path for path, slot in _down_slots(block) if down_layer_skipped(point, level, slot)]
        if len(skipped) == len(_down_slots(block)):
            names.append(f"down_blocks.{level}")
        else:
            names += [f"down_blocks.{level}.{path}" for path in skipped]
    if unet.mid_block is not None:
        names.append("mid_block")
    num_levels = len(unet.up_blocks)
    for index, block in enumerate(unet.up_blocks):
        level = num_levels - 1 - index
        skipped = [path for path, layer in _up_slots(block) if up_layer_skipped(point, level, layer)]
        if len(skipped) == len(_up_slots(block)):
            names.append(f"up_blocks.{index}")
        else:
            names += [f"up_blocks.{index}.{path}" for path in skipped]
    return names


def _sample_of(args: tuple, kwargs: dict) -> torch.Tensor:
    sample = args[0] if args else kwargs.get("sample")
    if not isinstance(sample, torch.Tensor):
        raise TypeError("DeepCacheUNet: the UNet must be called with the latent `sample` tensor first")
    return sample


class DeepCacheUNet:
    """Context manager that makes a diffusers UNet reuse its deep features on partial steps.

    `full_step_flags[i]` says whether call i of a chunk is full (see `schedule.full_steps`). Call
    the UNet as usual (chunk key None), or through this object with `chunk=` when the host calls
    the UNet separately for cond and uncond: each chunk keeps its own step counter and features.
    Pass `step=` where the host knows the step index (e.g. samplers with several calls per step).
    `calling(chunk, step)` does the same for a UNet reached through a wrapper module.
    """

    def __init__(self, unet: torch.nn.Module, branch: int, full_step_flags: Sequence[bool]):
        self.unet = unet
        self.branch = branch
        self.streams = FeatureStreams(full_step_flags)
        self.skipped = skipped_modules(unet, branch)  # validates the branch against the UNet
        self._saved: dict[torch.nn.Module, Any] = {}
        self._chunk: Hashable = None
        self._step: int | None = None
        self._call: CachedCall | None = None

    @property
    def full_step_flags(self) -> list[bool]:
        return self.streams.full_step_flags

    @property
    def stats(self) -> dict[str, int]:
        """Calls run full, partial, and full because the input changed (`forced_full`)."""
        return self.streams.stats

    # --- activation -------------------------------------------------------------------------
    def __enter__(self) -> DeepCacheUNet:
        if self._saved:
            raise RuntimeError("DeepCacheUNet is already active; leave the `with` block before entering again")
        self.reset()
        targets = [self.unet] + [self.unet.get_submodule(name) for name in self.skipped]
        for module in targets:
            self._saved[module] = module.__dict__.get("forward", _ABSENT)
        self.unet.forward = self._wrap_unet(self.unet.forward)
        for name in self.skipped:
            module = self.unet.get_submodule(name)
            module.forward = self._wrap_skipped(name, module.forward)
        return self

    def __exit__(self, *exc_info) -> None:
        for module, saved in self._saved.items():
            if saved is _ABSENT:
                del module.forward
            else:
                module.forward = saved
        self._saved.clear()
        self.reset()

    def reset(self) -> None:
        """Forget every chunk's step counter and features (a new sampling run starts)."""
        self.streams = FeatureStreams(self.streams.full_step_flags)

    # --- calls ------------------------------------------------------------------------------
    @contextmanager
    def calling(self, chunk: Hashable = None, step: int | None = None) -> Iterator[None]:
        """UNet calls inside this block belong to `chunk` (at `step`, if given)."""
        if not self._saved:
            raise RuntimeError("DeepCacheUNet is not active: use it as `with DeepCacheUNet(...) as cached:`")
        self._chunk, self._step = chunk, step
        try:
            yield
        finally:
            self._chunk, self._step = None, None

    def __call__(self, *args, chunk: Hashable = None, step: int | None = None, **kwargs):
        """Call the UNet for `chunk` (its own features and step counter), optionally at step `step`."""
        with self.calling(chunk, step):
            return self.unet(*args, **kwargs)

    def _wrap_unet(self, forward):
        def deepcache_unet_forward(*args, **kwargs):
            sample = _sample_of(args, kwargs)
            signature = (tuple(sample.shape), sample.dtype, sample.device)
            call = self.streams.begin(self._chunk, signature, self._step)
            self._call = call
            try:
                output = forward(*args, **kwargs)
                self.streams.complete(call)
                return output
            finally:
                self._call = None

        return deepcache_unet_forward

    def _wrap_skipped(self, name: str, forward):
        def deepcache_skipped_forward(*args, **kwargs):
            call = self._call
            if call is None:  # called outside a UNet call (e.g. a module probed on its own)
                return forward(*args, **kwargs)
            if call.partial:
                return call.features[name]
            output = forward(*args, **kwargs)
            call.features[name] = output
            return output

        return deepcache_skipped_forward
