"""Fast mode on the standalone host: captured forwards for the UNet step, VAE decode and text encode.

Fast mode is opt-in: the LCMFastMode node records `FastModeSettings` on a MODEL (and on the CLIP /
VAE wired through it), and `python -m lcm_accel run --fast` makes them the default for every model
of the run (`fast_mode_default`). At run time each forward goes through `fast_or_eager`: on a
supported device it replays a capture from the module's `GraphCache` (see `graph_cache`), else it
says ONCE, naming why, and runs the eager forward, so the images are the eager path's.
The LCM / TCD loop that replays UNet steps without waiting on the device is `fast_sampling`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from .graph_cache import CaptureBackend, CompileBackend, CudaGraphBackend, Tensors, graph_cache, graph_key

LOGGER = logging.getLogger("lcm_accel.fast_mode")
MODEL_OPTION = "fast_mode"
BACKENDS: dict[str, CaptureBackend] = {"cuda_graph": CudaGraphBackend(), "torch_compile": CompileBackend()}
BACKEND_NAMES = ("cuda_graph", "torch_compile")  # what the node offers; tests may register more in BACKENDS


@dataclass(frozen=True)
class FastModeSettings:
    """Whether fast mode is on, and which capture backend replays the forwards."""

    enable: bool = True
    backend: str = "cuda_graph"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"fast mode backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


_DEFAULT: contextvars.ContextVar[FastModeSettings | None] = contextvars.ContextVar(
    "lcm_accel_fast_default", default=None
)
_SAID: set[str] = set()


@contextmanager
def fast_mode_default(settings: FastModeSettings | None) -> Iterator[None]:
    """Within the block, MODEL / CLIP / VAE values without their own fast-mode setting use `settings`
    (the `run --fast` flag). A setting made by the LCMFastMode node wins."""
    token = _DEFAULT.set(settings)
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def say_once(message: str) -> None:
    """Log `message` as a warning the first time it is said in this process."""
    if message not in _SAID:
        _SAID.add(message)
        LOGGER.warning(message)


def forget_messages() -> None:
    """Let every message be said once more (tests)."""
    _SAID.clear()


def settings_of(value: Any) -> FastModeSettings | None:
    """The fast-mode setting in force for a MODEL (model_options), CLIP or VAE (`fast` field): its own,
    else the run's default; None when fast mode is off."""
    options = getattr(value, "model_options", None)
    own = options.get(MODEL_OPTION) if isinstance(options, dict) else getattr(value, "fast", None)
    settings = own if own is not None else _DEFAULT.get()
    return settings if settings is not None and settings.enable else None


def with_fast_mode(value: Any, settings: FastModeSettings) -> Any:
    """A clone of a MODEL / CLIP / VAE carrying `settings` (weights shared, nothing captured yet)."""
    if hasattr(value, "model_options"):
        clone = value.clone()
        clone.model_options[MODEL_OPTION] = settings
        return clone
    if hasattr(value, "fast"):
        return replace(value, fast=settings)
    raise TypeError(f"fast mode applies to a MODEL, CLIP or VAE, got {type(value).__name__}")


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def usable_backend(settings: FastModeSettings | None, module: torch.nn.Module) -> CaptureBackend | None:
    """The backend to capture `module`'s forwards with, or None (fast mode off, or unsupported where the
    module lives: then said once, naming why)."""
    if settings is None:
        return None
    backend = BACKENDS[settings.backend]
    reason = backend.unsupported(module_device(module))
    if reason is not None:
        say_once(f"fast mode ({settings.backend}): {reason}; running eager (same images)")
        return None
    return backend


def capture_failed(settings: FastModeSettings, what: str, error: Exception) -> None:
    say_once(
        f"fast mode ({settings.backend}): capturing {what} failed ({type(error).__name__}: {error}); {what} runs eager"
    )


def fast_or_eager(
    settings: FastModeSettings | None,
    name: str,
    module: torch.nn.Module,
    fn: Callable[..., Tensors],
    inputs: Tensors,
    extra: tuple = (),
    check_storage: bool = True,
) -> Tensors:
    """`fn(*inputs)`, a forward of `module`: replayed from `module`'s capture for this key when fast mode
    is on and supported, else eager. `extra` must name everything `fn` bakes in beyond the module and
    the input shapes. `check_storage` re-validates the captures against the weights' storage first."""
    backend = usable_backend(settings, module)
    if backend is None:
        return fn(*inputs)
    cache = graph_cache(module, backend)
    if check_storage:
        cache.check_storage(module)
    key = graph_key(name, inputs, module_dtype(module), extra)
    if key in cache.failed:
        return fn(*inputs)
    try:
        return cache.run(key, fn, inputs)
    except Exception as error:  # a forward that cannot be captured (host sync, unsupported op)
        cache.failed.add(key)
        capture_failed(settings, name, error)
        return fn(*inputs)
