"""Reading an image file into ComfyUI's IMAGE (B, H, W, 3) and MASK (B, H, W) tensors.

As ComfyUI's LoadImage: EXIF orientation applied; 16-bit "I" images scaled to 8-bit range;
every frame of the first frame's size is kept (animated files give a batch); the mask is
1 - alpha (1 = masked), or a 64x64 zero mask when the image has no alpha.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_image_and_mask(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE, MASK) from the image file at `path`."""
    from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

    try:
        opened = Image.open(path)
    except UnidentifiedImageError as error:
        raise ValueError(f"LoadImage: {path.name} is not an image Pillow can read") from error
    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(opened):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda value: value * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])
        if "A" in frame.getbands():
            alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha)[None])
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha)[None])
        else:
            masks.append(torch.zeros((1, 64, 64), dtype=torch.float32))
        if opened.format == "MPO":
            break  # multi-picture JPEGs: ComfyUI keeps the first picture only
    return torch.cat(images), torch.cat(masks)
