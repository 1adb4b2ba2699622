"""The pack as a ComfyUI V3 extension: what the root `comfy_entrypoint` returns.

Every node is registered under its `LCMAccel_` id. Workflows saved with the ids used before the
prefix keep loading: where ComfyUI has the node-replacement API (`io.NodeReplace`), each old id is
registered as a replacement by its new node; in an older ComfyUI, the old ids are registered as
deprecated copies (hidden from the node search). The two old ids other public packs also register
(`DeepCache`, `LCMScheduler`) are never taken from them: a copy is registered only when no pack has
registered that id before ours, and a pack loaded after ours replaces it, as ComfyUI does for any id
(`python -m lcm_accel migrate <workflow>` rewrites a saved workflow to the new ids).
"""

from __future__ import annotations

import logging
import sys

from comfy_api.latest import ComfyExtension, io

from .v3_nodes import v3_node

LOGGER = logging.getLogger("lcm_accel")


def has_node_replace() -> bool:
    """True when this ComfyUI can register node replacements (`io.NodeReplace` and the API for it)."""
    try:
        from comfy_api.latest import ComfyAPI
    except ImportError:
        return False
    # ComfyAPI() builds its `node_replacement` member from the nested class NodeReplacement
    return hasattr(io, "NodeReplace") and hasattr(ComfyAPI, "NodeReplacement")


class LCMAccelExtension(ComfyExtension):
    """The pack's nodes (declarations) and the replacements of its renamed ones.

    `old_ids` maps each id used before the prefix to its node's id; `shared_old_ids` are the old ids
    other public packs also register."""

    def __init__(self, declarations: tuple[type, ...], old_ids: dict[str, str], shared_old_ids: frozenset[str]):
        self.declarations = {declaration.NODE_ID: declaration for declaration in declarations}
        self.old_ids = old_ids
        self.shared_old_ids = shared_old_ids
        self.node_replace = has_node_replace()

    async def on_load(self) -> None:
        """Each old id -> its new node, through ComfyUI's node-replacement API (same inputs and outputs)."""
        if not self.node_replace:
            return
        from comfy_api.latest import ComfyAPI

        api = ComfyAPI()
        for old, new in self.old_ids.items():
            await api.node_replacement.register(io.NodeReplace(new_node_id=new, old_node_id=old))

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """Every declaration as a V3 node, plus deprecated copies under the old ids where ComfyUI
        cannot replace nodes (except the ids other packs share)."""
        made = [v3_node(declaration) for declaration in self.declarations.values()]
        if self.node_replace:
            return made
        taken = set(getattr(sys.modules.get("nodes"), "NODE_CLASS_MAPPINGS", None) or ())
        left = sorted(old for old in self.shared_old_ids if old in taken)
        made += [
            v3_node(self.declarations[new], node_id=old, deprecated=True)
            for old, new in self.old_ids.items()
            if old not in left
        ]
        if left:
            LOGGER.info(
                "LCM Accel: %s belong to another pack here; saved workflows that mean this pack's node: "
                "`python -m lcm_accel migrate <workflow>` rewrites them to LCMAccel_* ids",
                " / ".join(left),
            )
        return made
