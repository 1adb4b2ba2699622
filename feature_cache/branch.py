"""Which layers of a UNet a DeepCache partial step skips, independent of the UNet's implementation.

A UNet has `L` resolution levels (level 0 = full resolution). On the way down each level has
`layers` slots (its res/attention layers, then the downsampler in the last slot); on the way up
each level has `layers` res/attention layers, counted here *from the output end* (layer 0 is the
last one of the level, the one closest to the image), as DeepCache counts them.

A branch id picks the cache point (level, layer) = divmod(branch, layers): a partial step runs
the down path only below that point and the up path only from that point on; everything deeper
(the rest of the down path, the middle block, the deeper up layers) is skipped and its outputs
are the ones the last full step produced. Branch 0 is the shallowest (fastest, least exact).

With DeepCache's rule the up layers that still run only consume skip connections from down
layers that still run, so the only stale input on a partial step is the deep feature map entering
the up layer at the cache point. Pure Python, shared by every host.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CachePoint:
    """Where the shallow branch of a partial step starts: `layer` counted from the output end."""

    level: int
    layer: int


def cache_point(branch: int, num_levels: int, layers_per_level: int = 3) -> CachePoint:
    """The (level, layer) of `branch` (DeepCache's `cache_branch_id`), checked against the UNet's shape."""
    if isinstance(branch, bool) or not isinstance(branch, int) or branch < 0:
        raise ValueError(f"branch must be an integer >= 0, got {branch!r}")
    if layers_per_level < 1:
        raise ValueError(f"layers_per_level must be >= 1, got {layers_per_level}")
    level, layer = divmod(branch, layers_per_level)
    if level >= num_levels:
        raise ValueError(
            f"branch {branch} is too deep for a UNet with {num_levels} levels of {layers_per_level} "
            f"layers: choose 0..{num_levels * layers_per_level - 1}"
        )
    return CachePoint(level, layer)


def down_layer_skipped(point: CachePoint, level: int, layer: int) -> bool:
    """Whether down-path slot `layer` of `level` (the downsampler is the last slot) is skipped."""
    return level > point.level or (level == point.level and layer >= point.layer)


def up_layer_skipped(point: CachePoint, level: int, layer_from_end: int) -> bool:
    """Whether up-path layer `layer_from_end` (0 = last of the level) of `level` is skipped.

    Upsamplers run whenever their level's layers run: they belong to layer 0's side of the level.
    """
    return level > point.level or (level == point.level and layer_from_end > point.layer)
