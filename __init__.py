"""LCM Accel: LCM-LoRA nodes for ComfyUI, and the `lcm_accel` package for headless use.

ComfyUI imports this file under a path-derived module name at start-up and registers the pack
through `comfy_entrypoint` (its V3 extension API), so it must stay cheap: no torch, no comfy import
until ComfyUI calls the entry point. There is deliberately no NODE_CLASS_MAPPINGS here: ComfyUI
reads that first and would ignore the entry point. `WEB_DIRECTORY` holds the nodes' help pages
(`web/docs/<node id>.md`), which ComfyUI's node help panel shows.
"""

__version__ = "0.1.0"

WEB_DIRECTORY = "./web"

if __package__:

    def comfy_entrypoint():
        """The pack's `ComfyExtension`: every node as a V3 `io.ComfyNode`, and the renamed nodes'
        replacements (called by ComfyUI, which passes no arguments)."""
        from .hosts.comfyui.extension import LCMAccelExtension
        from .nodes import NODE_CLASSES, OLD_NODE_IDS, SHARED_OLD_IDS

        return LCMAccelExtension(NODE_CLASSES, OLD_NODE_IDS, SHARED_OLD_IDS)

    __all__ = ["WEB_DIRECTORY", "__version__", "comfy_entrypoint"]
else:
    # executed as a plain module rather than a package (pytest does that to the repository root, which
    # holds an __init__.py, when the checkout's folder name is not a valid module name): relative
    # imports cannot work then, and no node is needed.
    __all__ = ["WEB_DIRECTORY", "__version__"]
