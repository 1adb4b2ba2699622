"""DeepCache-style feature caching: reuse a UNet's deep features across sampling steps.

`schedule`, `settings`, `branch` and `run` are host-free (which step is full, which layers a partial
step skips, what each stream of UNet calls keeps during one sampling run);
`deepcache` applies them to a diffusers `UNet2DConditionModel`; `flops` measures what is skipped.
"""

from .branch import CachePoint, cache_point, down_layer_skipped, up_layer_skipped
from .deepcache import DeepCacheUNet, skipped_modules, unet_cache_point
from .flops import count_macs, example_inputs, skipped_fraction
from .run import CachedCall, FeatureStreams, SigmaSteps, step_of_sigma
from .schedule import full_steps, quad_center_steps, window_steps
from .settings import DeepCacheSettings

__all__ = [
    "CachePoint",
    "CachedCall",
    "DeepCacheSettings",
    "FeatureStreams",
    "SigmaSteps",
    "step_of_sigma",
    "DeepCacheUNet",
    "cache_point",
    "count_macs",
    "down_layer_skipped",
    "example_inputs",
    "full_steps",
    "quad_center_steps",
    "skipped_fraction",
    "skipped_modules",
    "unet_cache_point",
    "up_layer_skipped",
    "window_steps",
]
