"""Linear / Conv2d layers holding a quantized weight, dequantized on the fly at each call.

The float weight is gone (real memory saving) unless the layer keeps its high-precision source:
with `source`, the layer's `weight` IS that Parameter (same object), so an in-place LoRA patcher
(`lora_merge.LoraPatcher`) can still re-weight or restore it, and the layer re-quantizes from it
the next time it runs after the source changed (detected with an int64 checksum of its bit
patterns, one pass over the float weight per call: the LoRA patcher writes through `.data`, which
the tensor's version counter does not see). Nothing big is cached: each call dequantizes into a
temporary of one layer's weight.

On CUDA, an fp8_e4m3 Linear uses `torch._scaled_mm` where it fits (2-D matmul, K and N multiples
of 16, fp16/bf16 activations, compute capability >= 8.9): the activation is quantized to fp8 per
row (dynamic, per token) and both scales are applied by the kernel. Elsewhere it dequantizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .formats import FP8_MAX, QuantizedTensor, dequantize, quantize

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _fingerprint(weight: torch.Tensor) -> int:
    """An int64 sum of the weight's bit patterns (cheap change detection for a kept source)."""
    w = weight.detach()
    return int(w.contiguous().view(_INT_VIEW[w.element_size()]).sum(dtype=torch.int64))


class _QuantWeight(torch.nn.Module):
    """What QuantLinear and QuantConv2d share: the quantized buffers and the optional source."""

    def _init_quant(
        self, q: QuantizedTensor, bias: torch.Tensor | None, source: torch.nn.Parameter | None, symmetric: bool = True
    ) -> None:
        self.format = q.format
        self.group_size = q.group_size
        self.symmetric = symmetric
        self.weight_shape = tuple(q.shape)
        self.weight_dtype = source.dtype if source is not None else torch.float32
        self._set_quantized(q)
        self.bias = bias if bias is None or isinstance(bias, torch.nn.Parameter) else torch.nn.Parameter(bias)
        if source is not None:
            self.weight = source
            self._source_version = _fingerprint(source)
        else:
            self._source_version = None

    def _set_quantized(self, q: QuantizedTensor) -> None:
        self.register_buffer("qdata", q.data)
        self.register_buffer("scales", q.scales)
        self.register_buffer("zero_points", q.zero_points)

    @property
    def keeps_source(self) -> bool:
        return "weight" in self._parameters

    @property
    def quantized(self) -> QuantizedTensor:
        """The stored weight as a QuantizedTensor (shares the buffers)."""
        return QuantizedTensor(
            self.qdata, self.scales, self.format, torch.Size(self.weight_shape), self.group_size, self.zero_points
        )

    def requantize(self) -> None:
        """Quantize again from the kept source (after a LoRA re-weight or restore changed it)."""
        if not self.keeps_source:
            raise RuntimeError("this quantized layer kept no high-precision source: it cannot re-quantize")
        q = quantize(self.weight, self.format, self.group_size or 64, self.symmetric)
        self._set_quantized(q.to(self.qdata.device))
        self._source_version = _fingerprint(self.weight)

    def dequantized_weight(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """The weight for this call (on `device`): re-quantized first if the source changed."""
        if self.source_changed():
            self.requantize()
        q = self.quantized
        return dequantize(q if device is None or q.data.device == device else q.to(device), dtype)

    def source_changed(self) -> bool:
        """True when the kept source no longer holds the weights this layer was quantized from."""
        return self.keeps_source and _fingerprint(self.weight) != self._source_version

    @property
    def weight_nbytes(self) -> int:
        """Bytes the quantized weight takes (without the kept source and the bias)."""
        return self.quantized.nbytes

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.format == "int4" else ""
        source = ", keeps_source" if self.keeps_source else ""
        return f"{self.weight_shape}, format={self.format}{group}{source}"


class QuantLinear(_QuantWeight):
    """torch.nn.Linear with a quantized weight."""

    def __init__(
        self,
        q: QuantizedTensor,
        bias: torch.Tensor | None = None,
        source: torch.nn.Parameter | None = None,
        symmetric: bool = True,
    ):
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"QuantLinear needs a 2-D weight, got shape {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        self._init_quant(q, bias, source, symmetric)

    @classmethod
    def from_linear(
        cls,
        linear: torch.nn.Linear,
        fmt: str,
        group_size: int = 64,
        symmetric: bool = True,
        keep_source: bool = False,
        scales: torch.Tensor | None = None,
    ) -> QuantLinear:
        q = quantize(linear.weight, fmt, group_size, symmetric, scales=scales)
        return cls(q, linear.bias, linear.weight if keep_source else None, symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _scaled_mm_fits(self, x):
            return _fp8_linear(self, x)
        weight = self.dequantized_weight(x.dtype, x.device)
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return F.linear(x, weight, bias)


class QuantConv2d(_QuantWeight):
    """torch.nn.Conv2d (zeros padding) with a quantized weight."""

    def __init__(
        self,
        q: QuantizedTensor,
        bias: torch.Tensor | None,
        stride,
        padding,
        dilation,
        groups: int,
        source: torch.nn.Parameter | None = None,
        symmetric: bool = True,
    ):
        super().__init__()
        if len(q.shape) != 4:
            raise ValueError(f"QuantConv2d needs a 4-D weight, got shape {tuple(q.shape)}")
        self.out_channels = q.shape[0]
        self.in_channels = q.shape[1] * groups
        self.kernel_size = tuple(q.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._init_quant(q, bias, source, symmetric)

    @classmethod
    def from_conv(
        cls,
        conv: torch.nn.Conv2d,
        fmt: str,
        group_size: int = 64,
        symmetric: bool = True,
        keep_source: bool = False,
        scales: torch.Tensor | None = None,
    ) -> QuantConv2d:
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d supports zeros padding only, this conv uses {conv.padding_mode!r}")
        q = quantize(conv.weight, fmt, group_size, symmetric, scales=scales)
        return cls(
            q,
            conv.bias,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.weight if keep_source else None,
            symmetric,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype, x.device)
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


QUANT_MODULES = (QuantLinear, QuantConv2d)


# --------------------------------------------------------------------------- fp8 matmul on CUDA
FORCE_SCALED_MM = False  # tests set this to exercise the _scaled_mm path on CPU


def _scaled_mm_fits(layer: QuantLinear, x: torch.Tensor) -> bool:
    """True where `torch._scaled_mm` can run this fp8 Linear (see the module docstring)."""
    if layer.format != "fp8_e4m3" or not hasattr(torch, "_scaled_mm"):
        return False
    if layer.source_changed():
        return False  # re-quantize through the plain path first
    if layer.in_features % 16 or layer.out_features % 16:
        return False
    if FORCE_SCALED_MM:
        return True
    if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 9)


def _fp8_linear(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """y = x @ W.T + b with W in fp8 (per output channel scales) and x quantized to fp8 per row."""
    rows = x.reshape(-1, layer.in_features)
    x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp_min(1e-12)
    x_fp8 = (rows.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    w_scale = layer.scales.to(x.device).view(1, -1)
    out = torch._scaled_mm(x_fp8, layer.qdata.to(x.device).t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)
    if layer.bias is not None:
        out = out + layer.bias.to(device=x.device, dtype=x.dtype)
    return out.reshape(*x.shape[:-1], layer.out_features)
