"""The LCMQuantizeUNet node: merge-then-quantize the model's UNet to int8 / fp8 / int4 weights."""

from __future__ import annotations

from ..hosts import get_host
from ..hosts.node_declaration import CATEGORY
from .inputs import check_int

FORMATS = ["int8", "fp8_e4m3fn", "int4"]  # as ComfyUI names its fp8 weight dtype
# names saved workflows may carry -> the quantize/ format id the host is given
FORMAT_IDS = {"int8": "int8", "fp8_e4m3fn": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "int4": "int4"}
GROUP_SIZES = (2, 1024)


class LCMQuantizeUNet:
    """Quantize the UNet's Linear / Conv2d weights after the LoRAs loaded before this node are merged
    into them (merge-then-quantize). Layers named in `keep` stay in high precision."""

    NODE_ID = "LCMAccel_QuantizeUNet"
    DISPLAY_NAME = "Quantize UNet (int8/fp8/int4)"
    SEARCH_ALIASES = ("quantize", "int8", "fp8", "int4", "low bit", "qalora")
    OLD_IDS = ("LCMQuantizeUNet",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    "MODEL",
                    {
                        "tooltip": "The model to quantize; LoRAs loaded before this node are merged "
                        "first, then quantized with the weights."
                    },
                ),
                "format": (
                    FORMATS,
                    {
                        "default": "int8",
                        "tooltip": "int8: per output channel (about 1/4 of fp32). fp8_e4m3fn: per-channel scaled "
                        "fp8 (fast matmul on Ada/Hopper GPUs). int4: group-wise (about 1/7 of fp32, "
                        "least exact).",
                    },
                ),
                "keep": (
                    "STRING",
                    {
                        "advanced": True,
                        "default": "default",
                        "tooltip": "Comma-separated layer-name patterns (globs) kept in high precision. "
                        "'default' = first/last conv and the time embedding (conv_in, conv_out, "
                        "time_embedding / input_blocks.0.0, out.2, time_embed).",
                    },
                ),
                "group_size": (
                    "INT",
                    {
                        "advanced": True,
                        "default": 64,
                        "min": GROUP_SIZES[0],
                        "max": GROUP_SIZES[1],
                        "step": 2,
                        "tooltip": "int4 only: weights per scale (even; 64 or 128 are usual).",
                    },
                ),
                "keep_source": (
                    "BOOLEAN",
                    {
                        "advanced": True,
                        "default": False,
                        "tooltip": "Keep the merged float weights too, so LoRAs can be added or "
                        "re-weighted after this node (re-quantized on change). Costs the "
                        "float model's memory: no saving.",
                    },
                ),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with a quantized UNet.",)
    FUNCTION = "quantize"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Low-bit UNet: merge the loaded LoRAs, then quantize the weights to int8, fp8_e4m3fn or int4 "
        "(dequantized on the fly)."
    )

    @classmethod
    def VALIDATE_INPUTS(cls, format):
        """Accept the combo's names and the older `fp8_e4m3` of saved workflows (ComfyUI and the harness
        skip their own combo check for an input named here)."""
        if format not in FORMAT_IDS:
            return f"format must be one of {', '.join(FORMATS)}, got {format!r}"
        return True

    def quantize(self, model, format: str, keep: str = "default", group_size: int = 64, keep_source: bool = False):
        node = self.NODE_ID
        if format not in FORMAT_IDS:
            raise ValueError(f"{node}: format must be one of {', '.join(FORMATS)}, got {format!r}")
        check_int(node, "group_size", group_size, *GROUP_SIZES)
        if group_size % 2:
            raise ValueError(f"{node}: group_size must be even (two 4-bit values share a byte), got {group_size}")
        if not isinstance(keep, str):
            raise ValueError(f"{node}: keep must be a comma-separated string of layer-name patterns, got {keep!r}")
        try:
            return (get_host().quantize_unet(model, FORMAT_IDS[format], keep, int(group_size), bool(keep_source)),)
        except ValueError as error:
            raise ValueError(f"{node}: {error}") from error
