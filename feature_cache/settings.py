"""The DeepCache node's settings, checked once, and the step schedule they give a sampling run."""

from __future__ import annotations

from dataclasses import dataclass

from .schedule import check_int, check_percent, full_steps

SCHEDULES = ("uniform", "non-uniform")


@dataclass(frozen=True)
class DeepCacheSettings:
    """What the DeepCache node sets on a MODEL; hosts turn it into a per-run schedule.

    `interval`: one full UNet step every `interval` steps (1 = no caching, exact).
    `branch`: DeepCache's cache_branch_id, the skip branch whose deep features are reused
    (0 = shallowest: fastest, least exact). `start_percent` / `end_percent`: the part of the run
    in which steps may be partial. `schedule`: "uniform" or "non-uniform" (DeepCache's power law).
    """

    interval: int = 3
    branch: int = 0
    start_percent: float = 0.0
    end_percent: float = 1.0
    schedule: str = "uniform"

    def __post_init__(self):
        check_int("cache_interval", self.interval, 1)
        check_int("cache_depth", self.branch, 0)
        check_percent("start_percent", self.start_percent)
        check_percent("end_percent", self.end_percent)
        if self.start_percent > self.end_percent:
            raise ValueError(f"start_percent ({self.start_percent}) must not exceed end_percent ({self.end_percent})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def full_step_flags(self, num_steps: int) -> list[bool]:
        """One flag per step of a `num_steps` run: True = full UNet, False = reuse the deep features."""
        return full_steps(
            num_steps, self.interval, self.start_percent, self.end_percent, uniform=self.schedule == "uniform"
        )
