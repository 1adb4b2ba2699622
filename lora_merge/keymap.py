"""Map LoRA module names onto a UNet's parameters, whichever naming either side uses.

The UNet is named either like diffusers' ``UNet2DConditionModel`` (``down_blocks.1.attentions.0
...``) or like the original LDM/SGM code that ComfyUI uses (``input_blocks.4.1 ...``). Both
describe the same blocks; the correspondence follows from the block structure alone
(levels, resnets per level, which resnets carry a transformer), which is read from the
module's own parameter names. No key list is written down: every diffusers block prefix is
paired with its LDM prefix by the index arithmetic of the two layouts, and the resnet's
sub-layers are renamed the way the LDM ``ResBlock`` names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Sub-layers of a resnet: diffusers ResnetBlock2D name -> LDM ResBlock name.
RESNET_SUBLAYERS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# Blocks outside the down/mid/up stacks: diffusers module -> LDM module.
STEM_MODULES = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
FAMILIES = ("sd15", "sdxl", "ssd1b")


@dataclass(frozen=True)
class UNetLayout:
    """Block structure of an SD-style UNet. Depths are transformer blocks per resnet's
    attention (0: no attention); ``up_depth`` is in diffusers up_blocks order."""

    layers_per_block: int
    down_depth: tuple[tuple[int, ...], ...]
    up_depth: tuple[tuple[int, ...], ...]
    mid_depth: int

    @property
    def levels(self) -> int:
        return len(self.down_depth)


def _max_index(names: list[str], pattern: str) -> int:
    """1 + the largest integer captured by `pattern` in any name (0 if none match)."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for n in names for m in [rx.match(n)] if m]
    return 1 + max(found) if found else 0


def layout_from_diffusers_names(names: list[str]) -> UNetLayout:
    """Read the layout from diffusers-style module/parameter names."""
    levels = _max_index(names, r"down_blocks\.(\d+)\.")
    per_level = _max_index(names, r"down_blocks\.0\.resnets\.(\d+)\.")

    def depth(prefix: str) -> int:
        return _max_index(names, re.escape(prefix) + r"\.transformer_blocks\.(\d+)\.")

    down = tuple(tuple(depth(f"down_blocks.{i}.attentions.{j}") for j in range(per_level)) for i in range(levels))
    up = tuple(tuple(depth(f"up_blocks.{i}.attentions.{j}") for j in range(per_level + 1)) for i in range(levels))
    return UNetLayout(per_level, down, up, depth("mid_block.attentions.0"))


def layout_from_ldm_names(names: list[str]) -> UNetLayout:
    """Read the layout from LDM-style names (input_blocks / middle_block / output_blocks)."""
    n_input = _max_index(names, r"input_blocks\.(\d+)\.")
    levels = 1 + len({m.group(1) for n in names for m in [re.match(r"input_blocks\.(\d+)\.0\.op\.", n)] if m})
    per_level, rest = divmod(n_input - 1 - (levels - 1), levels)
    if rest or per_level < 1:
        raise ValueError(
            f"LDM-named UNet has {n_input} input blocks and {levels - 1} downsamplers: not an SD UNet layout."
        )

    def depth(prefix: str) -> int:
        return _max_index(names, re.escape(prefix) + r"\.transformer_blocks\.(\d+)\.")

    down = tuple(
        tuple(depth(f"input_blocks.{1 + i * (per_level + 1) + j}.1") for j in range(per_level)) for i in range(levels)
    )
    up = tuple(
        tuple(depth(f"output_blocks.{i * (per_level + 1) + j}.1") for j in range(per_level + 1)) for i in range(levels)
    )
    return UNetLayout(per_level, down, up, depth("middle_block.1"))


def block_prefixes(layout: UNetLayout) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is_resnet) for every block of the layout."""
    per, levels = layout.layers_per_block, layout.levels
    pairs: list[tuple[str, str, bool]] = [(diffusers, ldm, False) for diffusers, ldm in STEM_MODULES.items()]
    for i in range(levels):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", True))
            if layout.down_depth[i][j]:
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", False))
        if i < levels - 1:
            pairs.append(
                (f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (per + 1) + per}.0.op", False)
            )
    mid_attn = layout.mid_depth > 0
    pairs.append(("mid_block.resnets.0", "middle_block.0", True))
    if mid_attn:
        pairs.append(("mid_block.attentions.0", "middle_block.1", False))
    pairs.append(("mid_block.resnets.1", f"middle_block.{2 if mid_attn else 1}", True))
    for i in range(levels):
        for j in range(per + 1):
            n = i * (per + 1) + j
            pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", True))
            if layout.up_depth[i][j]:
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", False))
        if i < levels - 1:
            last = i * (per + 1) + per
            slot = 2 if layout.up_depth[i][per] else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{last}.{slot}.conv", False))
    return pairs


class NameTranslator:
    """Translate module paths between diffusers and LDM naming for one layout."""

    def __init__(self, layout: UNetLayout):
        self.to_ldm: dict[str, tuple[str, bool]] = {}
        self.to_diffusers: dict[str, tuple[str, bool]] = {}
        for diff, ldm, is_resnet in block_prefixes(layout):
            self.to_ldm[diff] = (ldm, is_resnet)
            self.to_diffusers[ldm] = (diff, is_resnet)
        self._sub_to_ldm = RESNET_SUBLAYERS
        self._sub_to_diffusers = {v: k for k, v in RESNET_SUBLAYERS.items()}

    def translate(self, name: str, to: str) -> str | None:
        """Module path in the other naming (`to` = 'ldm' or 'diffusers'), None if not a UNet block."""
        table, subs = (self.to_ldm, self._sub_to_ldm) if to == "ldm" else (self.to_diffusers, self._sub_to_diffusers)
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            head = ".".join(parts[:cut])
            if head in table:
                new_head, is_resnet = table[head]
                tail = ".".join(parts[cut:])
                if is_resnet and tail:
                    tail = next((subs[s] + tail[len(s) :] for s in subs if tail == s or tail.startswith(s + ".")), None)
                    if tail is None:
                        return None
                return new_head + ("." + tail if tail else "")
        return None


def detect_naming(param_names: list[str]) -> tuple[str, str]:
    """Return (naming, prefix) of a UNet's parameters: naming is 'diffusers' or 'ldm', prefix is
    what precedes the UNet's own names (e.g. 'diffusion_model.' in a ComfyUI model)."""
    for name in param_names:
        for naming, marker in (("diffusers", "conv_in.weight"), ("ldm", "input_blocks.0.0.weight")):
            if name == marker or name.endswith("." + marker):
                return naming, name[: len(name) - len(marker)]
    raise ValueError(
        "The target module is not an SD UNet: it has neither 'conv_in.weight' (diffusers naming) nor "
        "'input_blocks.0.0.weight' (LDM naming) among its parameters."
    )


def family_of_layout(layout: UNetLayout) -> str:
    """Classify a UNet layout: 'sd15' (attention at full resolution), 'sdxl' (no attention at the
    first level, a transformer in the mid block) or 'ssd1b' (SDXL pruned: no mid transformer)."""
    if not layout.down_depth:
        return "unknown"
    if any(layout.down_depth[0]):
        return "sd15"
    if not any(any(level) for level in layout.down_depth):
        return "unknown"
    return "sdxl" if layout.mid_depth else "ssd1b"


_ATTN_REFS = [
    ("down", re.compile(r"(?:^|_)down_blocks_(\d+)_attentions_\d+_transformer_blocks_(\d+)_")),
    ("mid", re.compile(r"(?:^|_)mid_block_attentions_0_transformer_blocks_()(\d+)_")),
    ("ldm_in", re.compile(r"(?:^|_)input_blocks_(\d+)_1_transformer_blocks_(\d+)_")),
    ("mid", re.compile(r"(?:^|_)middle_block_1_transformer_blocks_()(\d+)_")),
]


def family_of_lora_names(names: list[str], layers_per_block: int = 2) -> str:
    """Best-effort family of a LoRA from the blocks it names (diffusers or LDM, dotted or '_').

    'sd15' if it touches an attention at the first level, 'sdxl' if it touches the mid-block
    transformer or transformer blocks deeper than SSD-1B has (index >= 4), 'ssd1b' if it only
    touches SDXL-style attentions within SSD-1B's depth, 'unknown' if it names no attention."""
    seen_attention = False
    for name in names:
        flat = name.replace(".", "_")
        for kind, rx in _ATTN_REFS:
            m = rx.search(flat)
            if not m:
                continue
            seen_attention = True
            if kind == "down" and int(m.group(1)) == 0:
                return "sd15"
            if kind == "ldm_in" and (int(m.group(1)) - 1) // (layers_per_block + 1) == 0:
                return "sd15"
    if not seen_attention:
        return "unknown"
    for name in names:
        flat = name.replace(".", "_")
        for kind, rx in _ATTN_REFS:
            m = rx.search(flat)
            if m and (kind == "mid" or int(m.group(2)) >= 4):
                return "sdxl"
    return "ssd1b"


def family_class(family: str) -> str:
    """Families that share weight shapes and block names: SD1.x vs the SDXL kind."""
    return {"sd15": "sd15", "sdxl": "sdxl", "ssd1b": "sdxl"}.get(family, family)


class TargetIndex:
    """Every name under which a LoRA may refer to a weight of the target UNet.

    Aliases of each weight's module path: native, the other naming, and both flattened with
    '_' (kohya). ``resolve`` returns the module's full parameter name in the target."""

    def __init__(self, param_names: list[str]):
        try:
            self.naming, self.prefix = detect_naming(param_names)
        except ValueError:  # any other module: LoRA names must be its own module paths
            self.naming, self.prefix = "generic", ""
        local = [n[len(self.prefix) :] for n in param_names if n.startswith(self.prefix)]
        translator, other = None, None
        self.layout: UNetLayout | None = None
        self.family = "unknown"
        if self.naming != "generic":
            reader = layout_from_diffusers_names if self.naming == "diffusers" else layout_from_ldm_names
            self.layout = reader(local)
            self.family = family_of_layout(self.layout)
            translator = NameTranslator(self.layout)
            other = "ldm" if self.naming == "diffusers" else "diffusers"
        self.aliases: dict[str, str] = {}
        for name in local:
            if not name.endswith(".weight"):
                continue
            module = name[: -len(".weight")]
            alt = translator.translate(module, other) if translator else None
            for alias in {module, module.replace(".", "_"), *((alt, alt.replace(".", "_")) if alt else ())}:
                self.aliases.setdefault(alias, self.prefix + name)

    def resolve(self, module_name: str) -> str | None:
        """Full parameter name of the weight a LoRA module name refers to, or None."""
        return self.aliases.get(module_name)
