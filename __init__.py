"""LCM Accel: LCM-LoRA nodes for ComfyUI, and the `lcm_accel` package for headless use.

ComfyUI imports this file under a path-derived module name at start-up, so it must stay
cheap: it only exposes the node class mappings. Everything heavy is imported lazily by
the nodes themselves.
"""

__version__ = "0.1.0"

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
