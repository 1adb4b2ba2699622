"""Checked reading of LoRA weight files.

A safetensors file is an 8-byte little-endian header length, a JSON header, then one data
block. The header is parsed and checked (dtypes, shapes, offsets inside the data block, no
overlaps, file size consistent) before a single tensor is allocated, so a truncated or
corrupt download fails with a message naming the file instead of a crash or garbage.
Pickled checkpoints are only read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

# safetensors dtype name -> (torch dtype, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_2_PLUS = 0x80


class LoraFileError(ValueError):
    """A LoRA file that cannot be read or is not a LoRA; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as described by a safetensors header (offsets relative to the data block)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: str | Path) -> tuple[list[TensorEntry], dict[str, str], int]:
    """Parse and validate the header of a safetensors file.

    Returns (entries sorted by offset, ``__metadata__`` dict, byte offset of the data block).
    Raises LoraFileError naming the file for anything inconsistent.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise LoraFileError(f"LoRA file '{path}' is empty (0 bytes).")
    if size < 8:
        raise LoraFileError(f"LoRA file '{path}' is truncated: {size} bytes, a safetensors header needs 8.")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise LoraFileError(
                f"LoRA file '{path}' is not a valid safetensors file: header length {header_len} "
                f"does not fit in the file ({size} bytes); the file is truncated or not safetensors."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"LoRA file '{path}' has a corrupt safetensors header: {exc}.") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"LoRA file '{path}' has a safetensors header that is not a JSON object.")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise LoraFileError(f"LoRA file '{path}': '__metadata__' in the header is not an object.")
    data_start = 8 + header_len
    data_len = size - data_start
    entries = [_check_entry(path, name, info, data_len) for name, info in header.items()]
    entries.sort(key=lambda e: (e.start, e.end))
    covered = 0
    for prev, cur in zip([None, *entries], entries):
        if prev is not None and cur.start < prev.end:
            raise LoraFileError(
                f"LoRA file '{path}' is corrupt: tensors '{prev.name}' and '{cur.name}' overlap in the data block."
            )
        covered = max(covered, cur.end)
    if covered != data_len:
        state = "truncated" if covered > data_len else "followed by unexpected trailing bytes"
        raise LoraFileError(
            f"LoRA file '{path}' is {state}: the header describes {covered} data bytes, the file holds {data_len}."
        )
    return entries, {str(k): str(v) for k, v in metadata.items()}, data_start


def _check_entry(path: Path, name: str, info: object, data_len: int) -> TensorEntry:
    """Validate one header entry: dtype known, shape non-negative ints, offsets consistent."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise LoraFileError(f"LoRA file '{path}': header entry '{name}' lacks dtype/shape/data_offsets.")
    if info["dtype"] not in SAFETENSORS_DTYPES:
        raise LoraFileError(f"LoRA file '{path}': tensor '{name}' has unsupported dtype {info['dtype']!r}.")
    dtype, itemsize = SAFETENSORS_DTYPES[info["dtype"]]
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise LoraFileError(f"LoRA file '{path}': tensor '{name}' has an invalid shape {shape!r}.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise LoraFileError(f"LoRA file '{path}': tensor '{name}' has invalid data_offsets {offsets!r}.")
    start, end = offsets
    if end - start != math.prod(shape) * itemsize:
        raise LoraFileError(
            f"LoRA file '{path}': tensor '{name}' of shape {shape} ({info['dtype']}) needs "
            f"{math.prod(shape) * itemsize} bytes but its offsets span {end - start}."
        )
    if end > data_len:
        raise LoraFileError(
            f"LoRA file '{path}' is truncated: tensor '{name}' ends at byte {end} of the data block, "
            f"which holds only {data_len} bytes."
        )
    return TensorEntry(name, dtype, tuple(shape), start, end)


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor of a validated safetensors file onto the CPU."""
    path = Path(path)
    entries, metadata, data_start = read_safetensors_header(path)
    tensors: dict[str, torch.Tensor] = {}
    with path.open("rb") as f:
        for entry in entries:
            f.seek(data_start + entry.start)
            raw = bytearray(f.read(entry.end - entry.start))
            if entry.end == entry.start:
                tensors[entry.name] = torch.empty(entry.shape, dtype=entry.dtype)
            else:
                tensors[entry.name] = torch.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape)
    return tensors, metadata


def load_pickled(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a pickled checkpoint with ``weights_only=True`` (no code execution)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise LoraFileError(
            f"LoRA file '{path}' could not be read as a weights-only torch checkpoint ({exc}). "
            "Only plain tensors are accepted from pickled files; convert it to safetensors."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LoraFileError(f"LoRA file '{path}' is a torch checkpoint but not a flat dict of tensors.")
    return obj


def load_tensor_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a LoRA weight file by content (not extension): safetensors, or weights-only pickle."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file '{path}' does not exist or is not a file.")
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] == ZIP_MAGIC or (head[:1] and head[0] == PICKLE_PROTOCOL_2_PLUS):
        return load_pickled(path), {}
    return load_safetensors(path)
