"""A procedural captioned-image world: one shape in a named colour at a named position on a plain
background, 64x64 px, deterministic from a seed.

    scene = random_scene(generator)       # Scene(shape, colour, position, background, ...)
    caption(scene)                        # "a red circle on a white background, top left"
    render(scene, style="outlined")       # (3, 64, 64) float in [0, 1]

The vocabulary is small but every word matters (4 shapes x 6 colours x 5 positions x 3
backgrounds), so a model has to read the prompt. The "outlined" style draws the same shape hollow
(a border, at most half the shape's thickness, so every shape, the thin-armed cross included, shows
the background inside): what the style LoRA learns and the scorer detects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SIZE = 64
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.12, 0.66, 0.22),
    "blue": (0.14, 0.30, 0.88),
    "yellow": (0.95, 0.84, 0.12),
    "purple": (0.56, 0.20, 0.72),
    "orange": (0.96, 0.50, 0.10),
}
POSITIONS = {  # centre (x, y) in pixels
    "top left": (19.0, 19.0),
    "top right": (45.0, 19.0),
    "bottom left": (19.0, 45.0),
    "bottom right": (45.0, 45.0),
    "center": (32.0, 32.0),
}
BACKGROUNDS = {"white": (0.94, 0.94, 0.92), "black": (0.07, 0.07, 0.08), "gray": (0.50, 0.50, 0.52)}
STYLES = ("plain", "outlined")
OUTLINE_WIDTH = 5.0  # pixels of border kept by the "outlined" style (at most half a shape's thickness)
CROSS_ARM = 0.42  # half the width of a cross's arms, relative to the shape's radius


@dataclass(frozen=True)
class Scene:
    """What one picture shows; `jitter` (dx, dy, scale) varies the exact placement and size."""

    shape: str
    colour: str
    position: str
    background: str
    jitter: tuple[float, float, float] = (0.0, 0.0, 1.0)


def caption(scene: Scene) -> str:
    """The scene's prompt, e.g. "a red circle on a white background, top left"
    ("an orange ..." before a vowel)."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    return f"{article} {scene.colour} {scene.shape} on a {scene.background} background, {scene.position}"


def random_scene(generator: torch.Generator) -> Scene:
    """One scene drawn uniformly from the vocabulary (with placement jitter) from `generator`."""

    def pick(options) -> str:
        options = list(options)
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    u = torch.rand(3, generator=generator).tolist()
    jitter = ((u[0] - 0.5) * 4.0, (u[1] - 0.5) * 4.0, 0.9 + 0.2 * u[2])
    return Scene(pick(SHAPES), pick(COLOURS), pick(POSITIONS), pick(BACKGROUNDS), jitter)


def scenes(count: int, seed: int) -> list[Scene]:
    """`count` random scenes, deterministic in `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [random_scene(generator) for _ in range(count)]


def _signed_inside(shape: str, x: torch.Tensor, y: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed depth inside the shape in pixels (> 0 inside, the border at 0), for points
    (x, y) relative to its centre."""
    if shape == "circle":
        return radius - torch.sqrt(x * x + y * y)
    if shape == "square":
        half = radius * 0.86
        return half - torch.maximum(x.abs(), y.abs())
    if shape == "triangle":  # pointing up, centroid at the centre
        r = radius * 1.4
        depth = r / 2 - y  # base edge: y <= r / 2 (y grows downwards)
        for angle in (math.radians(30), math.radians(150)):  # the two slanted edges
            nx, ny = math.cos(angle), -math.sin(angle)
            depth = torch.minimum(depth, r / 2 - (x * nx + y * ny))
        return depth
    if shape == "cross":
        arm, half = radius * CROSS_ARM, radius * 1.05
        bar_h = torch.minimum(half - x.abs(), arm - y.abs())
        bar_v = torch.minimum(arm - x.abs(), half - y.abs())
        return torch.maximum(bar_h, bar_v)
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def _max_depth(shape: str, radius: float) -> float:
    """The deepest point inside the shape (its inradius): a cross's arms are much thinner than a
    circle, so a border of fixed width would fill them and leave the cross solid."""
    return {"circle": radius, "square": radius * 0.86, "triangle": radius * 0.7, "cross": radius * CROSS_ARM}[shape]


def render(scene: Scene, style: str = "plain", supersample: int = 2) -> torch.Tensor:
    """The scene as a (3, 64, 64) float image in [0, 1] (anti-aliased by supersampling)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    n = SIZE * supersample
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / supersample
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    cx, cy = POSITIONS[scene.position]
    dx, dy, scale = scene.jitter
    depth = _signed_inside(scene.shape, x - (cx + dx), y - (cy + dy), 12.0 * scale)
    mask = (depth > 0).float()
    if style == "outlined":  # a border no thicker than half the shape's thickest part, so it stays hollow
        mask = mask * (depth < min(OUTLINE_WIDTH, 0.5 * _max_depth(scene.shape, 12.0 * scale))).float()
    mask = torch.nn.functional.avg_pool2d(mask[None, None], supersample)[0]
    colour = torch.tensor(COLOURS[scene.colour]).view(3, 1, 1)
    background = torch.tensor(BACKGROUNDS[scene.background]).view(3, 1, 1)
    return background * (1 - mask) + colour * mask


def render_batch(items: list[Scene], style: str = "plain") -> torch.Tensor:
    """(N, 3, 64, 64) images in [0, 1]."""
    return torch.stack([render(scene, style) for scene in items])
