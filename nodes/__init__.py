"""The pack's node classes (category "LCM Accel"). Thin: they check inputs, then call the host
(`hosts.get_host()`). Importing this package is cheap: no torch until a node runs."""

from __future__ import annotations

from .accelerator_nodes import (
    LCMAcceleratorKSampler,
    LCMAcceleratorLoader,
    LCMAcceleratorSampler,
    LCMAcceleratorScheduler,
)
from .deepcache_node import DeepCache
from .fast_mode_node import LCMFastMode
from .lora_nodes import LCMAdapterMixer, LCMLoraLoader
from .quantize_node import LCMQuantizeUNet
from .sampling_nodes import LCMKSampler, LCMSampler, LCMScheduler

NODE_CLASS_MAPPINGS = {
    "LCMLoraLoader": LCMLoraLoader,
    "LCMAdapterMixer": LCMAdapterMixer,
    "LCMScheduler": LCMScheduler,
    "LCMSampler": LCMSampler,
    "LCMKSampler": LCMKSampler,
    "DeepCache": DeepCache,
    "LCMFastMode": LCMFastMode,
    "LCMQuantizeUNet": LCMQuantizeUNet,
    "LCMAcceleratorLoader": LCMAcceleratorLoader,
    "LCMAcceleratorScheduler": LCMAcceleratorScheduler,
    "LCMAcceleratorSampler": LCMAcceleratorSampler,
    "LCMAcceleratorKSampler": LCMAcceleratorKSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LCMLoraLoader": "LCM-LoRA Loader",
    "LCMAdapterMixer": "LCM Adapter Mixer",
    "LCMScheduler": "LCM Scheduler",
    "LCMSampler": "LCM Sampler",
    "LCMKSampler": "LCM KSampler",
    "DeepCache": "DeepCache",
    "LCMFastMode": "LCM Fast Mode (CUDA)",
    "LCMQuantizeUNet": "LCM Quantize UNet",
    "LCMAcceleratorLoader": "Accelerator LoRA Loader (LCM/TCD/Hyper-SD/Lightning/DMD2/PCM/Flash)",
    "LCMAcceleratorScheduler": "Accelerator Scheduler",
    "LCMAcceleratorSampler": "Accelerator Sampler",
    "LCMAcceleratorKSampler": "Accelerator KSampler",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
