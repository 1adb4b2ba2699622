"""LCM Accel: LCM-LoRA nodes for ComfyUI, and the `lcm_accel` package for headless use.

ComfyUI imports this file under a path-derived module name at start-up, so it must stay
cheap: it only exposes the node class mappings (no torch, no comfy import). The nodes pick
their host when they run: ComfyUI's own types inside ComfyUI, the standalone host headless.
"""

__version__ = "0.1.0"

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
# else: executed as a plain module rather than a package (pytest does that to the repository root,
# which holds an __init__.py, when the checkout's folder name is not a valid module name): relative
# imports cannot work then, and no node is needed.

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
