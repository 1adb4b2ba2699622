"""Hosts: the node types and core nodes the pack runs on (ComfyUI itself, or the standalone host).

`get_host()` picks the implementation of `interface.LCMHost` for the current process. Importing
this package is cheap (no torch): host implementations are imported on first use.
"""
from __future__ import annotations

from .interface import HostNotAvailableError, LCMHost, running_in_comfyui


def get_host() -> LCMHost:
    """The host the nodes run on: the standalone (diffusers) host headless; inside ComfyUI the
    ComfyUI host, which is not implemented yet, so that case raises HostNotAvailableError."""
    if running_in_comfyui():
        raise HostNotAvailableError(
            "LCM Accel is running inside ComfyUI, but its ComfyUI host is not implemented yet; "
            "run workflows headless with `python -m lcm_accel run ...` for now"
        )
    from .standalone.lcm import STANDALONE_HOST

    return STANDALONE_HOST


__all__ = ["HostNotAvailableError", "LCMHost", "get_host", "running_in_comfyui"]
