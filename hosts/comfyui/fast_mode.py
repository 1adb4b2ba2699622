"""Fast mode on the ComfyUI host: the diffusion model's forward captured per shape key and replayed.

LCMFastMode adds a DIFFUSION_MODEL wrapper (ComfyUI's documented wrapper point around the UNet's
forward) to a clone. On CUDA, a plain UNet call (latent, timesteps, context, optional `y`; no
ControlNet, no transformer patches) goes through the module's `GraphCache` (`runtime/graph_cache.py`):
captured once per (batch, height, width, dtype, device, input shapes) after warm-up, then replayed
(CUDA graphs, or torch.compile mode="reduce-overhead"). Anything else runs eager, said once.

Why the captures stay valid: our LoRA nodes write into the weights' own storage (`inplace.py`), so a
strength change re-weights under the capture and the next replay uses the new weights, with no
re-capture. When ComfyUI itself moves or replaces weights (its own LoRA patches swap in new
Parameters; offloading moves them), the cache sees the storage change (`check_storage`) and captures
again rather than replaying stale memory. On the CPU the node says once that it runs eager and
returns the model unchanged.
"""

from __future__ import annotations

import logging

import torch

from ...runtime.graph_cache import CaptureBackend, CompileBackend, CudaGraphBackend, graph_cache, graph_key

LOGGER = logging.getLogger("lcm_accel.fast_mode")
WRAPPER_KEY = "lcm_accel_fast_mode"
BACKENDS: dict[str, CaptureBackend] = {"cuda_graph": CudaGraphBackend(), "torch_compile": CompileBackend()}
_said: set[str] = set()


def _say_once(reason: str) -> None:
    if reason not in _said:
        _said.add(reason)
        LOGGER.warning("LCMFastMode: %s", reason)


def fast_mode(model, clip, vae, enable: bool, backend: str) -> tuple:
    """(model with the capture wrapper, clip, vae); unchanged when disabled or not on CUDA."""
    if not enable:
        return model, clip, vae
    if backend not in BACKENDS:
        raise ValueError(f"LCMFastMode: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    problem = BACKENDS[backend].unsupported(torch.device(model.load_device))
    if problem is not None:
        _say_once(f"runs eager: {problem}")
        return model, clip, vae
    import comfy.patcher_extension as ext

    clone = model.clone()
    clone.remove_wrappers_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    clone.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, captured_forward(BACKENDS[backend]))
    return clone, clip, vae


def capture_problem(control, transformer_options: dict, kwargs: dict) -> str | None:
    """Why this UNet call cannot be replayed from a capture (None: it can)."""
    if control is not None:
        return "a ControlNet is attached"
    for key in ("patches", "patches_replace"):
        if transformer_options.get(key):
            return f"the model carries transformer {key} (e.g. attention patches of another node)"
    extra = [k for k, v in kwargs.items() if v is not None]
    if extra:
        return f"the UNet gets extra inputs {sorted(extra)}"
    return None


def captured_forward(backend: CaptureBackend):
    """The DIFFUSION_MODEL wrapper: replay the UNet call from the module's capture for its shapes."""

    def wrapper(executor, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        problem = capture_problem(control, transformer_options, kwargs)
        unet = executor.class_obj
        if problem is None:
            problem = backend.unsupported(x.device)
        if problem is not None:
            _say_once(f"runs eager for this call: {problem}")
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        inputs = (x, timesteps, context) + ((y,) if y is not None else ())
        options = {k: v for k, v in transformer_options.items() if k not in ("sigmas", "cond_or_uncond", "uuids")}

        def run(x_, t_, c_, *rest):
            return (executor(x_, t_, c_, rest[0] if rest else None, None, dict(options)),)

        cache = graph_cache(unet, backend)
        cache.check_storage(unet)
        key = graph_key("comfyui_unet", inputs, x.dtype, extra=(tuple(transformer_options.get("cond_or_uncond", ())),))
        if key in cache.failed:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        try:
            return cache.run(key, run, inputs)[0]
        except Exception as error:  # noqa: BLE001 - a forward that cannot be captured runs eager, said once
            cache.failed.add(key)
            _say_once(f"capture failed ({type(error).__name__}: {error}); this shape runs eager")
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    return wrapper
