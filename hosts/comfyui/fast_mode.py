"""Fast mode on the ComfyUI host: a documented pass-through (the fast path is standalone-only).

A captured UNet step reads the weights through their storage addresses. ComfyUI 0.3.64's
ModelPatcher does not keep those: `patch_weight_to_device` writes each LoRA-patched weight with
`comfy.utils.set_attr_param` (a new tensor wrapped in a new nn.Parameter) unless the patcher was made
with `weight_inplace_update=True` (no loader does that), `unpatch_model` puts the backup back the
same way, and model management moves and offloads weights between devices (`model.to`, low-VRAM
partial loading). A graph captured before any of these would replay stale or freed memory, so the
node returns its inputs unchanged here and says so once.
"""
from __future__ import annotations

import logging

LOGGER = logging.getLogger("lcm_accel.fast_mode")
_said = False

MESSAGE = ("LCMFastMode: the captured fast path is standalone-only; inside ComfyUI the model runs ComfyUI's own "
           "way, because ComfyUI's ModelPatcher swaps in new Parameter tensors when it patches or unpatches LoRA "
           "weights and moves weights between devices, which would invalidate a captured graph")


def fast_mode(model, clip, vae, enable: bool, backend: str) -> tuple:
    """(model, clip, vae) unchanged; the first enabled call logs why."""
    global _said
    if enable and not _said:
        _said = True
        LOGGER.warning(MESSAGE)
    return model, clip, vae
