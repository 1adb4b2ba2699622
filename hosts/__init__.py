"""Hosts: the node types and core nodes the pack runs on (ComfyUI itself, or the standalone host).

`get_host()` picks the implementation of `interface.LCMHost` for the current process. Importing
this package is cheap (no torch): host implementations are imported on first use.
"""

from __future__ import annotations

from .interface import HostNotAvailableError, LCMHost, running_in_comfyui


def get_host() -> LCMHost:
    """The host the nodes run on: ComfyUI's own types inside ComfyUI, the standalone (diffusers)
    host headless."""
    if running_in_comfyui():
        from .comfyui.host import COMFYUI_HOST

        return COMFYUI_HOST
    from .standalone.host import STANDALONE_HOST

    return STANDALONE_HOST


__all__ = ["HostNotAvailableError", "LCMHost", "get_host", "running_in_comfyui"]
