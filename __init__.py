"""LCM Accel: LCM-LoRA nodes for ComfyUI, and the `lcm_accel` package for headless use.

ComfyUI imports this file under a path-derived module name at start-up, so it must stay
cheap: it only exposes the node class mappings. Everything heavy is imported lazily by
the nodes themselves. Inside ComfyUI the mappings stay empty until the ComfyUI host exists:
nodes that cannot run are never registered.
"""
import logging

from .hosts.interface import running_in_comfyui

__version__ = "0.1.0"

if running_in_comfyui():
    logging.getLogger(__name__).warning(
        "LCM Accel: the ComfyUI host is not implemented yet; no nodes registered (headless use works)"
    )
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
