"""Which sampling steps run the UNet fully and which reuse cached deep features (DeepCache).

A schedule is a list of booleans, one per UNet call of a chunk: True = full step (the whole UNet
runs and the cache is refreshed), False = partial step (only the shallow branch runs). Pure
Python + numpy, host-free.

Steps outside the window [start_percent, end_percent) of the run are always full: the first
steps fix the image layout and the last ones the fine detail, so users may keep them exact.
Inside the window the first step is full (nothing is cached yet) and then either every
`interval`-th step is full (uniform) or the same number of full steps is spread non-uniformly,
dense around `center` and sparse far from it, with DeepCache's power-law rule (non-uniform).
"""

from __future__ import annotations

import math

import numpy as np


def check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_percent(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def window_steps(num_steps: int, start_percent: float, end_percent: float) -> list[int]:
    """Indices i of the steps whose fraction i / num_steps lies in [start_percent, end_percent)."""
    return [i for i in range(num_steps) if start_percent <= i / num_steps < end_percent]


def quad_center_steps(length: int, num_full: int, center: int, power: float) -> list[int]:
    """DeepCache's non-uniform choice of `num_full` full steps among `length`, dense near `center`.

    Points are spaced evenly between -center**(1/power) and (length-center)**(1/power) and raised
    to `power`, so their gaps grow with the distance from `center`. For the negative side DeepCache
    takes the principal complex root and keeps the real part of the power (truncated to an
    integer); we do the same so that the chosen steps are DeepCache's. Step 0 is always full.
    When rounding merges points and fewer than `num_full` remain, `power` is lowered by 0.02 and
    the choice repeated; below 1 there is no such spacing and ValueError is raised.
    """
    if num_full >= length:
        return list(range(length))
    trial = power
    while trial > 1:
        start = (-center) ** (1 / trial)  # complex for center > 0, as in DeepCache
        stop = (length - center) ** (1 / trial)
        points = np.linspace(start, stop, num_full + 1) ** trial
        offsets = np.unique(np.real(points).astype(np.int32))[1:-1]
        steps = [0] + [int(o) + center for o in offsets]
        if len(steps) == num_full:
            return steps
        trial -= 0.02
    raise ValueError(
        f"non-uniform schedule: no power in (1, {power}] spaces {num_full} full steps among {length} "
        f"around center={center}; lower the interval, move center, or use the uniform schedule"
    )


def full_steps(
    num_steps: int,
    interval: int,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    uniform: bool = True,
    center: int | None = None,
    power: float = 1.4,
) -> list[bool]:
    """One flag per step: True where the UNet runs fully, False where cached features are reused.

    `center` (non-uniform only) is a step index counted from the start of the window; None means
    30% into the window (DeepCache's recommended 15 of 50 steps). `power` > 1 is the starting
    exponent of DeepCache's spacing rule (its recommendation: 1.4).
    """
    check_int("num_steps", num_steps, 1)
    check_int("interval", interval, 1)
    check_percent("start_percent", start_percent)
    check_percent("end_percent", end_percent)
    if start_percent > end_percent:
        raise ValueError(f"start_percent ({start_percent}) must not exceed end_percent ({end_percent})")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 1:
        raise ValueError(f"power must be a number > 1, got {power!r}")

    flags = [True] * num_steps
    window = window_steps(num_steps, start_percent, end_percent)
    if center is not None:
        check_int("center", center, 0)
        if uniform:
            raise ValueError("center only applies to the non-uniform schedule (uniform=False)")
        if window and center >= len(window):
            raise ValueError(f"center must be a step inside the window (0..{len(window) - 1}), got {center}")
    if not window or interval == 1:
        return flags

    if uniform:
        full_in_window = set(range(0, len(window), interval))
    else:
        num_full = math.ceil(len(window) / interval)
        mid = round(0.3 * len(window)) if center is None else center
        full_in_window = set(quad_center_steps(len(window), num_full, mid, power))
    for position, step in enumerate(window):
        flags[step] = position in full_in_window
    return flags
