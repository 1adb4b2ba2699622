"""LoRA files, weighted mixing, and in-place patching with exact restore (pure torch).

    lora = load_lora("lcm-lora-sdv1-5.safetensors")
    patcher = LoraPatcher(unet)                      # diffusers- or LDM-named UNet
    report = patcher.apply([(lora, 1.0), (style, 0.8)], rank=None)
    patcher.reweight([1.0, 0.5])                     # no file re-read
    patcher.restore()                                # bit-exact

LyCORIS files (LoHa, LoKr, DoRA, full diff, LoRA bias) load the same way (lycoris.py).
"""

from .formats import LoraFactors, LoraFile, load_lora, parse_lora
from .keymap import TargetIndex, UNetLayout, family_of_layout, family_of_lora_names
from .lycoris import AdapterModule
from .mix import LowRankPatch, compress_svd, mix, mix_cat
from .patcher import BiasPart, LoraPatcher, LoraPatchError, PatchBuilder, PatchTarget, part_delta, part_on, plan_targets
from .report import AdapterReport, LoadReport
from .safetensors_io import LoraFileError, load_tensor_file, read_safetensors_header
from .writer import LORA_FORMATS, write_kohya, write_lora, write_peft

__all__ = [
    "AdapterModule",
    "BiasPart",
    "LORA_FORMATS",
    "AdapterReport",
    "LoadReport",
    "LoraFactors",
    "LoraFile",
    "LoraFileError",
    "LoraPatchError",
    "LoraPatcher",
    "LowRankPatch",
    "PatchBuilder",
    "PatchTarget",
    "TargetIndex",
    "UNetLayout",
    "compress_svd",
    "family_of_layout",
    "family_of_lora_names",
    "load_lora",
    "load_tensor_file",
    "mix",
    "mix_cat",
    "parse_lora",
    "part_delta",
    "part_on",
    "plan_targets",
    "read_safetensors_header",
    "write_kohya",
    "write_lora",
    "write_peft",
]
