"""Low-bit UNets (pure torch): int8 / fp8 e4m3 per-channel and int4 group-wise weight quantization,
quantized Linear / Conv2d layers, merge-then-quantize of a UNet, quantized checkpoints, and the
QALoRA (EfficientDM) building blocks.

    patcher.apply([(lcm_lora, 1.0), (style, 0.8)])      # lora_merge: merge first
    report = quantize_unet(unet, "int8")                 # then quantize (keeps conv_in/out, time embedding)
"""

from .checkpoint import QUANT_MARKER, load_quantized_unet_state, quantized_state_dict, read_quant_metadata
from .formats import (
    DEFAULT_GROUP_SIZE,
    FORMATS,
    QuantizedTensor,
    dequantize,
    error_bound,
    normalize_format,
    quantize,
)
from .modules import QuantConv2d, QuantLinear
from .unet import (
    DEFAULT_KEEP,
    QuantizeError,
    QuantizeReport,
    is_quantized,
    keeps_source,
    parse_keep,
    quantize_layer,
    quantize_unet,
    quantized_layers,
    refuse_lora_on_quantized,
    split_layers,
    weight_bytes,
)

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "DEFAULT_KEEP",
    "FORMATS",
    "QUANT_MARKER",
    "QuantConv2d",
    "QuantLinear",
    "QuantizeError",
    "QuantizeReport",
    "QuantizedTensor",
    "dequantize",
    "error_bound",
    "is_quantized",
    "keeps_source",
    "load_quantized_unet_state",
    "normalize_format",
    "parse_keep",
    "quantize",
    "quantize_layer",
    "quantize_unet",
    "quantized_layers",
    "quantized_state_dict",
    "read_quant_metadata",
    "refuse_lora_on_quantized",
    "split_layers",
    "weight_bytes",
]
