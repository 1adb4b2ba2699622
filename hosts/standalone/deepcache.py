"""DeepCache on the standalone host: the node's settings on a MODEL, one cache per sampling run.

The DeepCache node only records its settings on a MODEL clone. A sampling run (KSampler or
SamplerCustom with any sampler) opens `deepcache_run(model, sigmas)`: the schedule comes from the
run's own sigmas, the UNet is wrapped by `feature_cache.DeepCacheUNet` for the run only, and each
UNet call names its stream (positive / negative, conditioning entry) and its sigma, so CFG passes
keep separate features and multi-call samplers (Heun, DPM2) follow the schedule by sigma.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from ...feature_cache import DeepCacheSettings, DeepCacheUNet, SigmaSteps, unet_cache_point
from ...runtime.model_types import ModelHost

SETTINGS_OPTION = "deepcache"
RUN_OPTION = "deepcache_run"


def apply_deepcache(model: ModelHost, settings: DeepCacheSettings) -> ModelHost:
    """A MODEL clone whose sampling runs use DeepCache; refuses a branch the UNet does not have."""
    try:
        unet_cache_point(model.unet, settings.branch)
    except ValueError as error:
        raise ValueError(f"DeepCache: cache_depth={settings.branch} does not fit this model: {error}") from None
    clone = model.clone()
    clone.model_options[SETTINGS_OPTION] = settings
    return clone


class _RunCalls:
    """Routes each UNet call of a run to its stream and step of the active DeepCacheUNet."""

    def __init__(self, cached: DeepCacheUNet, sigmas: torch.Tensor):
        self.cached = cached
        self.steps = SigmaSteps(sigmas.tolist())

    def calling(self, key: Hashable, sigma: torch.Tensor) -> AbstractContextManager[None]:
        stream, step = self.steps.locate(key, float(sigma.flatten()[0]))
        return self.cached.calling(stream, step)


@contextmanager
def deepcache_run(model: ModelHost, sigmas: torch.Tensor) -> Iterator[ModelHost]:
    """The MODEL to sample this run with: itself without DeepCache, else a clone whose UNet calls
    use a fresh cache (dropped, and the UNet's forwards restored, when the run ends or fails)."""
    settings = model.model_options.get(SETTINGS_OPTION)
    if settings is None:
        yield model
        return
    flags = settings.full_step_flags(len(sigmas) - 1)
    with DeepCacheUNet(model.unet, settings.branch, flags) as cached:
        run_model = model.clone()
        run_model.model_options[RUN_OPTION] = _RunCalls(cached, sigmas)
        yield run_model


def unet_call_context(model: ModelHost, key: Hashable, sigma: torch.Tensor) -> AbstractContextManager[None]:
    """Where a sampler calls the UNet: names the call's stream and sigma to the run's cache, if any."""
    run = model.model_options.get(RUN_OPTION)
    return nullcontext() if run is None else run.calling(key, sigma)
