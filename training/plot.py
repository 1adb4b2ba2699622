"""A PNG loss curve drawn with pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path


def smooth(values: list[float], rate: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (what TensorBoard's smoothing slider shows)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = rate * avg + (1 - rate) * v
        out.append(avg / (1 - rate**i))
    return out


def draw_loss_plot(
    steps: list[int], losses: list[float], path: str | Path, title: str = "loss", size: tuple[int, int] = (720, 400)
) -> Path:
    """Raw (grey) and smoothed (blue) loss against step, axes labelled with the ranges."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    if losses:
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-12
        first, last = steps[0], max(steps[-1], steps[0] + 1)

        def xy(step: int, value: float) -> tuple[float, float]:
            x = left + (step - first) / (last - first) * (width - left - right)
            y = height - bottom - (value - lo) / (hi - lo) * (height - top - bottom)
            return x, y

        for series, colour in ((losses, (170, 170, 170)), (smooth(losses), (30, 90, 200))):
            points = [xy(s, v) for s, v in zip(steps, series)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            else:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        draw.text((4, top), f"{hi:.4g}", fill="black")
        draw.text((4, height - bottom - 10), f"{lo:.4g}", fill="black")
        draw.text((left, height - bottom + 6), f"step {first}", fill="black")
        draw.text((width - right - 80, height - bottom + 6), f"step {steps[-1]}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
