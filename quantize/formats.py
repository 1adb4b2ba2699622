"""Weight quantization formats: int8 and fp8 e4m3 per output channel, int4 group-wise (pure torch).

A weight of shape (out, ...) is viewed as a matrix (out, K), K = the product of the other dims
(a conv's in_channels * kh * kw), and quantized row by row:

    int8      symmetric, one scale per output channel: q = round(w / s), s = max|w_row| / 127,
              q in [-127, 127].  Error bound: |w - q*s| <= s / 2 per element of that row.
    fp8_e4m3  one scale per output channel, s = max|w_row| / 448 (448 = e4m3fn's largest value),
              q = fp8(w / s) rounded to nearest even. Error bound (e4m3 has 3 mantissa bits):
              |w - q*s| <= max(2**-4 * |w|, 2**-10 * s) (relative half-ulp, or half the subnormal
              spacing 2**-9 near zero).
    int4      group-wise along K (group_size columns, K zero-padded to a multiple of it), two
              nibbles per uint8 (even column in the low nibble). Symmetric: s = max|w_group| / 7,
              q in [-7, 7] stored as q + 8. Asymmetric: s = (max - min) / 15, zero point
              z = round(-min / s) in [0, 15], q = clamp(round(w / s) + z, 0, 15).
              Error bound: |w - dequant| <= s / 2 per element of that group.

Scales are float32 (they are 1/K or 1/group_size of the weight, so their cost is small).
`quantize(..., scales=...)` quantizes with given step sizes (QALoRA exports learned ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORMATS = ("int8", "fp8_e4m3", "int4")
FORMAT_ALIASES = {"fp8": "fp8_e4m3", "fp8_e4m3fn": "fp8_e4m3"}
# the names users see (ComfyUI spells its fp8 weight dtype fp8_e4m3fn); the ids above stay internal
DISPLAY_NAMES = {"fp8_e4m3": "fp8_e4m3fn"}
USER_FORMATS = tuple(DISPLAY_NAMES.get(fmt, fmt) for fmt in FORMATS)
INT8_MAX = 127
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
INT4_SYM_MAX = 7
INT4_LEVELS = 15
DEFAULT_GROUP_SIZE = 64
_TINY = 1e-12  # a scale floor so that all-zero rows quantize to zeros instead of NaN


def normalize_format(fmt: str) -> str:
    """The canonical format name; refuses an unknown one, listing the known ones."""
    name = FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if name not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}: choose one of {', '.join(USER_FORMATS)} (or 'fp8')")
    return name


def check_group_size(group_size: int) -> int:
    """int4 group sizes are positive and even (two nibbles share a byte)."""
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be a positive even integer (e.g. 64 or 128), got {group_size!r}")
    return group_size


@dataclass
class QuantizedTensor:
    """A quantized weight: `data` (int8 (out, K) / float8_e4m3fn (out, K) / uint8 (out, K_pad // 2)),
    float32 `scales` ((out,) per channel, or (out, groups) for int4), optional uint8 `zero_points`
    (out, groups) for asymmetric int4, the original `shape` and `group_size` (int4 only)."""

    data: torch.Tensor
    scales: torch.Tensor
    format: str
    shape: torch.Size
    group_size: int | None = None
    zero_points: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of storage (data + scales + zero points)."""
        tensors = [self.data, self.scales] + ([self.zero_points] if self.zero_points is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight in `dtype`, shape `self.shape` (computed in float32, then cast)."""
        return dequantize(self, dtype)

    def to(self, device) -> QuantizedTensor:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedTensor(
            move(self.data), move(self.scales), self.format, self.shape, self.group_size, move(self.zero_points)
        )


def _rows(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() < 1 or weight.shape[0] == 0:
        raise ValueError(f"cannot quantize a tensor of shape {tuple(weight.shape)}: it needs output channels")
    return weight.detach().reshape(weight.shape[0], -1).float()


def per_channel_scales(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """max|w_row| / qmax for int8 or fp8_e4m3 (float32, shape (out,))."""
    qmax = INT8_MAX if normalize_format(fmt) == "int8" else FP8_MAX
    return (_rows(weight).abs().amax(dim=1) / qmax).clamp_min(_TINY)


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, groups, group_size) view of the rows, zero-padded to whole groups."""
    rows = _rows(weight)
    pad = (-rows.shape[1]) % group_size
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.view(rows.shape[0], -1, group_size)


def int4_scales(weight: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE, symmetric: bool = True):
    """(scales (out, groups), zero points (out, groups) uint8 or None) for int4."""
    groups = _grouped(weight, check_group_size(group_size))
    if symmetric:
        return (groups.abs().amax(dim=2) / INT4_SYM_MAX).clamp_min(_TINY), None
    low, high = groups.amin(dim=2).clamp_max(0), groups.amax(dim=2).clamp_min(0)
    scales = ((high - low) / INT4_LEVELS).clamp_min(_TINY)
    zeros = torch.round(-low / scales).clamp(0, INT4_LEVELS).to(torch.uint8)
    return scales, zeros


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 2n) with values 0..15 -> uint8 (..., n), even index in the low nibble."""
    values = values.to(torch.uint8)
    return values[..., 0::2] | (values[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 (..., n) -> uint8 (..., 2n)."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def quantize(
    weight: torch.Tensor,
    fmt: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    symmetric: bool = True,
    scales: torch.Tensor | None = None,
    zero_points: torch.Tensor | None = None,
) -> QuantizedTensor:
    """Quantize `weight` (out, ...) to `fmt` (see the module docstring for the formulas and bounds).
    `scales` (and `zero_points` for asymmetric int4) override the computed step sizes."""
    fmt = normalize_format(fmt)
    shape = weight.shape
    if fmt == "int4":
        group_size = check_group_size(group_size)
        groups = _grouped(weight, group_size)
        if scales is None:
            scales, zero_points = int4_scales(weight, group_size, symmetric)
        scales = scales.detach().float().reshape(groups.shape[:2]).clamp_min(_TINY)
        if zero_points is None and not symmetric:
            raise ValueError("asymmetric int4 with given scales needs zero_points too")
        if zero_points is None:
            q = torch.round(groups / scales[..., None]).clamp(-INT4_SYM_MAX, INT4_SYM_MAX) + 8
        else:
            zero_points = zero_points.to(torch.uint8).reshape(groups.shape[:2])
            q = (torch.round(groups / scales[..., None]) + zero_points[..., None].float()).clamp(0, INT4_LEVELS)
        data = pack_int4(q.to(torch.uint8).flatten(1))
        return QuantizedTensor(data, scales.contiguous(), fmt, shape, group_size, zero_points)
    rows = _rows(weight)
    scales = per_channel_scales(weight, fmt) if scales is None else scales.detach().float().reshape(-1).clamp_min(_TINY)
    scaled = rows / scales[:, None]
    if fmt == "int8":
        data = torch.round(scaled).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        data = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return QuantizedTensor(data, scales.contiguous(), fmt, shape)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight of a QuantizedTensor, shape `q.shape`, in `dtype` (computed in float32)."""
    if q.format == "int4":
        values = unpack_int4(q.data).float().view(q.data.shape[0], -1, q.group_size)
        offset = 8.0 if q.zero_points is None else q.zero_points[..., None].float()
        rows = ((values - offset) * q.scales[..., None]).flatten(1)
        k = 1
        for d in q.shape[1:]:
            k *= d
        rows = rows[:, :k]
    else:
        rows = q.data.float() * q.scales[:, None]
    return rows.reshape(q.shape).to(dtype)


def error_bound(weight: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    """The documented per-element bound on |weight - dequantize(q)| (shape of `weight`)."""
    if q.format == "int4":
        k = _rows(weight).shape[1]
        per_column = q.scales.repeat_interleave(q.group_size, dim=1)[:, :k]
        return (per_column / 2).reshape(weight.shape)
    per_row = q.scales[:, None].expand(_rows(weight).shape)
    if q.format == "int8":
        return (per_row / 2).reshape(weight.shape)
    rel = _rows(weight).abs() * 2.0**-4
    return torch.maximum(rel, per_row * 2.0**-10).reshape(weight.shape)
