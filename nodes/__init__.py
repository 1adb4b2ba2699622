"""The pack's nodes (category "LCM Accel"), each declared once: ComfyUI's V1 attributes plus the
pack-prefixed `NODE_ID`, display name, search aliases and old ids (see `hosts.node_declaration`).

The headless harness registers `PACK_NODES` as they are; inside ComfyUI the host turns each into a V3
`io.ComfyNode` (`hosts.comfyui.extension`). Nodes are thin: they check inputs, then call the host
(`hosts.get_host()`). Importing this package is cheap: no torch until a node runs.
"""

from __future__ import annotations

from .accelerator_nodes import (
    LCMAcceleratorKSampler,
    LCMAcceleratorLoader,
    LCMAcceleratorSampler,
    LCMAcceleratorScheduler,
)
from .deepcache_node import DeepCache
from .fast_mode_node import LCMFastMode
from .lora_nodes import LCMAdapterMixer, LCMAdapterMixerRows, LCMLoraLoader, LCMLoraRow
from .quantize_node import LCMQuantizeUNet
from .sampling_nodes import LCMKSampler, LCMSampler, LCMScheduler

NODE_CLASSES: tuple[type, ...] = (
    LCMLoraLoader,
    LCMAdapterMixerRows,
    LCMLoraRow,
    LCMScheduler,
    LCMSampler,
    LCMKSampler,
    DeepCache,
    LCMFastMode,
    LCMQuantizeUNet,
    LCMAcceleratorLoader,
    LCMAcceleratorScheduler,
    LCMAcceleratorSampler,
    LCMAcceleratorKSampler,
    LCMAdapterMixer,
)

PACK_NODES: dict[str, type] = {cls.NODE_ID: cls for cls in NODE_CLASSES}
"""Node id -> node class."""

DISPLAY_NAMES: dict[str, str] = {cls.NODE_ID: cls.DISPLAY_NAME for cls in NODE_CLASSES}

OLD_NODE_IDS: dict[str, str] = {old: cls.NODE_ID for cls in NODE_CLASSES for old in cls.OLD_IDS}
"""Id a workflow saved before the `LCMAccel_` prefix uses -> the node it loads as."""

SHARED_OLD_IDS = frozenset({"DeepCache", "LCMScheduler"})
"""Old ids other public packs register too (DeepCache: two packs; LCMScheduler:
ComfyUI-sampler-lcm-alternative): a workflow with one of them may mean either pack's node."""

__all__ = ["DISPLAY_NAMES", "NODE_CLASSES", "OLD_NODE_IDS", "PACK_NODES", "SHARED_OLD_IDS"]
