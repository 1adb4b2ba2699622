"""A shape-keyed cache of captured forwards (UNet step, VAE decode, text encode) for fast mode (both hosts).

Each module (UNet, VAE, text encoder) carries one `GraphCache` per capture backend. A call with a
new `GraphKey` (callable name, batch, height, width, dtype, device, extra) warms up and captures the
callable on static input buffers; a call with a known key copies its inputs into those buffers
and replays. Outputs are cloned, because a replay overwrites them.

A capture reads the weights through their storage addresses, so it is valid only while every
parameter and buffer keeps its storage. The LoRA patcher writes in place (apply / re-weight /
restore keep `data_ptr()`), so captures survive LoRA changes; anything that swaps storage
(`module.to(...)`, `load_state_dict(assign=True)`) is caught by `check_storage`, which drops the
module's captures before the next replay.

Backends: `CudaGraphBackend` (torch.cuda.CUDAGraph captured after warm-up on a side stream) and
`CompileBackend` (torch.compile mode="reduce-overhead": inductor kernels replayed as CUDA graphs).
Both need CUDA; tests register a recording backend that replays eagerly on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

Tensors = tuple[torch.Tensor, ...]
Replay = Callable[[], Tensors]
_CACHE_ATTRIBUTE = "_lcm_accel_graph_caches"


@dataclass(frozen=True)
class GraphKey:
    """What a capture is specialised to: a callable on inputs of one shape, dtype and device.
    `extra` holds what else the callable bakes in (other input shapes, layer choices)."""

    name: str
    batch: int
    height: int
    width: int
    dtype: str
    device: str
    extra: tuple = ()


def graph_key(name: str, inputs: Sequence[torch.Tensor], dtype: torch.dtype, extra: tuple = ()) -> GraphKey:
    """The key of `name` called on `inputs` by a module of `dtype`: batch, height and width from the
    first input's shape (B, C, H, W; token ids (B, T) give height T, width 0), every input's shape
    and dtype in `extra`."""
    first = inputs[0]
    height = first.shape[-2] if first.ndim >= 3 else first.shape[-1]
    width = first.shape[-1] if first.ndim >= 3 else 0
    shapes = tuple((tuple(t.shape), str(t.dtype)) for t in inputs)
    return GraphKey(
        name, int(first.shape[0]), int(height), int(width), str(dtype), str(first.device), shapes + tuple(extra)
    )


class CaptureBackend(Protocol):
    """Turns `fn(*static_inputs) -> tuple of tensors` into a replay reading those same buffers."""

    name: str

    def unsupported(self, device: torch.device) -> str | None:
        """Why this backend cannot run on `device` (None: it can)."""

    def capture(self, fn: Callable[..., Tensors], static_inputs: Tensors) -> Replay:
        """Warm up and capture; the returned replay runs `fn` on the buffers' current contents."""


class CudaGraphBackend:
    """torch.cuda.CUDAGraph: warm-up runs on a side stream (lazy init, cuDNN/cuBLAS workspaces), then
    one capture; a replay launches the whole forward at once."""

    name = "cuda_graph"
    warmup_runs = 3

    def unsupported(self, device: torch.device) -> str | None:
        if device.type != "cuda" or not torch.cuda.is_available():
            return f"CUDA graphs need a CUDA device, the weights are on {device}"
        return None

    def capture(self, fn: Callable[..., Tensors], static_inputs: Tensors) -> Replay:
        side = torch.cuda.Stream(device=static_inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = fn(*static_inputs)

        def replay() -> Tensors:
            graph.replay()
            return static_outputs

        return replay


class CompileBackend:
    """torch.compile(mode="reduce-overhead"): inductor's fused kernels, replayed through its own CUDA
    graphs. One compiled callable per key (dynamo recompiles per closure up to its cache limit)."""

    name = "torch_compile"
    warmup_runs = 3

    def unsupported(self, device: torch.device) -> str | None:
        if device.type != "cuda" or not torch.cuda.is_available():
            return f"torch.compile mode='reduce-overhead' replays CUDA graphs and needs a CUDA device, the weights are on {device}"
        return None

    def capture(self, fn: Callable[..., Tensors], static_inputs: Tensors) -> Replay:
        compiled = torch.compile(fn, mode="reduce-overhead")
        for _ in range(self.warmup_runs):
            compiled(*static_inputs)
        return lambda: compiled(*static_inputs)


@dataclass
class _Entry:
    static_inputs: Tensors
    replay: Replay


@dataclass
class GraphCache:
    """One module's captures for one backend, keyed by `GraphKey`; counts captures and replays."""

    backend: CaptureBackend
    entries: dict[GraphKey, _Entry] = field(default_factory=dict)
    captures: int = 0
    replays: int = 0
    storage: tuple[int, ...] | None = None
    failed: set[GraphKey] = field(default_factory=set)  # keys whose capture raised: run eager

    def check_storage(self, module: torch.nn.Module) -> bool:
        """Drop every capture if any parameter or buffer of `module` moved to new storage since the
        captures were made; True when the captures were kept."""
        now = storage_fingerprint(module)
        kept = self.storage is None or now == self.storage
        if not kept:
            self.entries.clear()
            self.failed.clear()
        self.storage = now
        return kept

    def run(self, key: GraphKey, fn: Callable[..., Tensors], inputs: Tensors) -> Tensors:
        """`fn(*inputs)` through the capture of `key` (captured on first use), outputs cloned."""
        entry = self.entries.get(key)
        if entry is None:
            static = tuple(t.clone() for t in inputs)
            with torch.no_grad():
                entry = _Entry(static, self.backend.capture(fn, static))
            self.entries[key] = entry
            self.captures += 1
        else:
            for buffer, value in zip(entry.static_inputs, inputs):
                buffer.copy_(value)
            self.replays += 1
        return tuple(t.clone() for t in entry.replay())


def storage_fingerprint(module: torch.nn.Module) -> tuple[int, ...]:
    """The storage address of every parameter and buffer, in module order."""
    return tuple(t.data_ptr() for t in module.parameters()) + tuple(t.data_ptr() for t in module.buffers())


def graph_cache(module: torch.nn.Module, backend: CaptureBackend) -> GraphCache:
    """`module`'s cache for `backend`, kept on the module itself (it lives and dies with the weights)."""
    caches = module.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
    cache = caches.get(backend.name)
    if cache is None or cache.backend is not backend:
        cache = caches[backend.name] = GraphCache(backend)
    return cache


def drop_graph_caches(module: torch.nn.Module) -> None:
    """Forget every capture made for `module` (frees their memory pools once unreferenced)."""
    module.__dict__.pop(_CACHE_ATTRIBUTE, None)
