"""The DeepCache node: reuse the UNet's deep features across sampling steps (training-free)."""

from __future__ import annotations

from ..hosts import get_host
from ..hosts.node_declaration import CATEGORY
from .inputs import check_int, check_range

SCHEDULES = ["uniform", "non-uniform"]
MAX_INTERVAL = 50
MAX_DEPTH = 11  # SD1.5 has 12 skip branches (0-11), SDXL 9 (0-8); the host checks the model's own


class DeepCache:
    """Skip the deep part of the UNet on most steps, reusing the features of the last full step
    (DeepCache, Ma et al. 2023). Works with every sampler; the cache lives for one sampling run."""

    NODE_ID = "LCMAccel_DeepCache"
    DISPLAY_NAME = "DeepCache"
    SEARCH_ALIASES = ("deepcache", "cache", "speed up", "feature cache")
    OLD_IDS = ("DeepCache",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to accelerate (SD1.x / SD2 / SDXL UNets)."}),
                "cache_interval": (
                    "INT",
                    {
                        "default": 3,
                        "min": 1,
                        "max": MAX_INTERVAL,
                        "tooltip": "One full UNet step every N steps; the others reuse the cached deep "
                        "features. 1 = off (exact). 2-3 suit 4-8 step LCM, 3-5 suit 25+ steps.",
                    },
                ),
                "cache_depth": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_DEPTH,
                        "tooltip": "Which skip branch is recomputed on cached steps: 0 = only the "
                        "outermost layers run (fastest, least exact); higher runs more of the "
                        "UNet (SD1.5: 0-11, SDXL: 0-8).",
                    },
                ),
                "start_percent": (
                    "FLOAT",
                    {
                        "advanced": True,
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Steps before this fraction of the run are always full.",
                    },
                ),
                "end_percent": (
                    "FLOAT",
                    {
                        "advanced": True,
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Steps from this fraction of the run on are always full.",
                    },
                ),
                "schedule": (
                    SCHEDULES,
                    {
                        "advanced": True,
                        "default": "uniform",
                        "tooltip": "uniform: every N-th step is full. non-uniform: as many full steps, "
                        "dense early in the run and sparse later (DeepCache's power law; "
                        "meant for 25+ steps).",
                    },
                ),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with DeepCache feature caching on.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "DeepCache: training-free reuse of high-level UNet features across sampling steps "
        "(about 1.5-2.5x on the UNet at interval 3, branch 0)."
    )

    def apply(
        self,
        model,
        cache_interval: int,
        cache_depth: int,
        start_percent: float,
        end_percent: float,
        schedule: str = "uniform",
    ):
        node = self.NODE_ID
        check_int(node, "cache_interval", cache_interval, 1, MAX_INTERVAL)
        check_int(node, "cache_depth", cache_depth, 0, MAX_DEPTH)
        check_range(node, "start_percent", start_percent, 0.0, 1.0)
        check_range(node, "end_percent", end_percent, 0.0, 1.0)
        if start_percent > end_percent:
            raise ValueError(f"{node}: start_percent ({start_percent}) must not exceed end_percent ({end_percent})")
        if schedule not in SCHEDULES:
            raise ValueError(f"{node}: schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        from ..feature_cache.settings import DeepCacheSettings

        settings = DeepCacheSettings(cache_interval, cache_depth, float(start_percent), float(end_percent), schedule)
        return (get_host().deepcache(model, settings),)
