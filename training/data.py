"""Training data: a folder of image + caption pairs, or a prompt list (data-free distillation).

`ShuffledBatches` turns any indexable dataset into an endless stream of batches with a seeded
permutation per epoch; its position (epoch, offset) is part of every checkpoint, so a resumed
run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageCaptionFolder:
    """`name.png` + `name.txt` pairs (any of IMAGE_SUFFIXES); items are {"pixels": (3, R, R) in
    [-1, 1], "prompt": str}, resized (shorter side) and centre-cropped to `resolution`."""

    def __init__(self, folder: str | Path, resolution: int):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"--data {folder}: not a folder")
        if resolution < 8 or resolution % 8:
            raise ValueError(f"--resolution must be a positive multiple of 8, got {resolution}")
        self.resolution = resolution
        images = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"--data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            raise ValueError(f"--data {folder}: images without a caption file (same name, .txt): {missing[:5]}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        path = self.images[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = self.resolution / min(image.size)
            size = (max(self.resolution, round(image.width * scale)), max(self.resolution, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
            left, top = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.reshape(self.resolution, self.resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0
        return {"pixels": pixels, "prompt": path.with_suffix(".txt").read_text(encoding="utf-8").strip()}


class PromptList:
    """Prompts from a text file, one per line (blank lines skipped); items are {"prompt": str}."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--synthetic-prompts {path}: no such file")
        self.prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not self.prompts:
            raise ValueError(f"--synthetic-prompts {path}: the file has no prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"prompt": self.prompts[index]}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list everything else, key by key."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class ShuffledBatches:
    """Endless batches from `dataset` (a fresh seeded permutation each epoch), resumable. With
    several processes each takes its own slice of every global batch."""

    def __init__(
        self, dataset: Sequence, batch_size: int, seed: int = 0, process_index: int = 0, num_processes: int = 1
    ):
        if batch_size < 1:
            raise ValueError(f"--batch must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.epoch, self.offset = 0, 0

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def next_batch(self) -> dict[str, Any]:
        indices: list[int] = []
        global_size = self.batch_size * self.num_processes
        while len(indices) < global_size:
            order = self._order()
            take = order[self.offset : self.offset + global_size - len(indices)]
            indices += take
            self.offset += len(take)
            if self.offset >= len(order):
                self.epoch, self.offset = self.epoch + 1, 0
        mine = indices[self.process_index * self.batch_size : (self.process_index + 1) * self.batch_size]
        return collate([self.dataset[i] for i in mine])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "global_batch": self.batch_size * self.num_processes}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved position; the position counts global samples, so any process count
        that keeps the global batch (--batch x processes) continues exactly. Another global batch is
        refused: it would change what every later step sees."""
        saved = int(state.get("global_batch", self.batch_size * self.num_processes))
        if saved != self.batch_size * self.num_processes:
            hint = (
                f"pass --batch {saved // self.num_processes}"
                if saved % self.num_processes == 0
                else f"use a process count that divides {saved}"
            )
            raise ValueError(
                f"the checkpoint was written with a global batch of {saved} (--batch x processes); this "
                f"run has {self.batch_size} x {self.num_processes} = {self.batch_size * self.num_processes}: "
                f"{hint} to continue it exactly"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
