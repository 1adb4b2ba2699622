"""Parsed LoRA files, read once per (path, mtime, size) and shared by every host.

The same file gives the same `LoraFile` object while it is unchanged on disk, so a host can tell
"same adapters" by identity and skip re-reading and re-planning when only a seed or a weight changes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from ..lora_merge import LoraFile, load_lora

MAX_CACHED_LORA_FILES = 16  # parsed files kept in memory (least recently used dropped first)

_file_cache: OrderedDict[str, tuple[int, int, LoraFile]] = OrderedDict()


def load_lora_cached(path: str | Path) -> LoraFile:
    """`lora_merge.load_lora(path)`, cached by (path, mtime, size)."""
    stat = os.stat(path)
    key = str(path)
    cached = _file_cache.get(key)
    if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        _file_cache.move_to_end(key)
        return cached[2]
    lora = load_lora(path)
    _file_cache[key] = (stat.st_mtime_ns, stat.st_size, lora)
    _file_cache.move_to_end(key)
    while len(_file_cache) > MAX_CACHED_LORA_FILES:
        _file_cache.popitem(last=False)
    return lora


def clear_lora_file_cache() -> None:
    """Forget every cached LoRA file (patch lists that hold one keep it alive)."""
    _file_cache.clear()


def merge_duplicate_files(pairs: Sequence[tuple[LoraFile, float]]) -> tuple[tuple[LoraFile, ...], tuple[float, ...]]:
    """The same file twice is one adapter with the summed weight (same delta, half the rank)."""
    order: list[LoraFile] = []
    total: dict[int, float] = {}
    for lora, weight in pairs:
        if id(lora) not in total:
            order.append(lora)
            total[id(lora)] = 0.0
        total[id(lora)] += float(weight)
    return tuple(order), tuple(total[id(lora)] for lora in order)


def _lora_arg(text: str) -> tuple[Path, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path:
        return Path(text), 1.0
    try:
        return Path(path), float(weight)
    except ValueError:
        return Path(text), 1.0  # a path with a colon and no weight


def load_lora_args(texts: list[str]) -> list:
    """The `--lora FILE[:WEIGHT]` arguments as (LoraFile, weight) pairs; a missing file is refused."""
    loras = []
    for text in texts:
        path, weight = _lora_arg(text)
        if not path.is_file():
            raise FileNotFoundError(f"--lora {text}: no such file {path}")
        loras.append((load_lora_cached(path), weight))
    return loras
