"""One sampling run's cache state, host-free: which call is full, and what each stream keeps.

A *stream* is a sequence of UNet calls that see the same kind of input step after step: the
positive and the negative pass of CFG are two streams, and so are calls for different
conditioning entries. Each stream keeps its own deep features, so cond and uncond never mix.

`SigmaSteps` names the step and the stream of a call from the sigma it runs at, so a host that
only sees (sigma, which conds) per call, as ComfyUI's model wrappers do, still follows the run's
schedule; a second call with the same key at the same sigma (Heun's corrector and the next step's
first call, two area conds) gets its own stream. `FeatureStreams` decides full or partial and
holds the features; a partial call whose input differs in shape, dtype or device from its
stream's last full call is run full instead (`stats["forced_full"]`): reuse would be wrong,
recomputing is exact.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


def step_of_sigma(sigma: float, sigmas: Sequence[float]) -> int:
    """The step of a run with these sigmas (one step per interval) at which the UNet sees `sigma`.

    A sigma of the schedule names its own step; one between two (a midpoint of DPM2 or DPM++ 2S)
    belongs to the step it lies in. Above the first sigma is step 0, at or below the last is the last.
    """
    num_steps = len(sigmas) - 1
    if num_steps < 1:
        raise ValueError(f"a run needs at least 2 sigmas, got {len(sigmas)}")
    for i, s in enumerate(sigmas[:-1]):
        if math.isclose(sigma, s, rel_tol=1e-5, abs_tol=1e-8):
            return i
    for i in range(num_steps):
        high, low = max(sigmas[i], sigmas[i + 1]), min(sigmas[i], sigmas[i + 1])
        if low < sigma < high:
            return i
    return 0 if sigma > sigmas[0] else num_steps - 1


class SigmaSteps:
    """Maps each UNet call (key, sigma) to (stream, step) for a run with these sigmas."""

    def __init__(self, sigmas: Sequence[float]):
        self.sigmas = [float(s) for s in sigmas]
        self._seen: dict[tuple[Hashable, float], int] = {}

    def locate(self, key: Hashable, sigma: float) -> tuple[Hashable, int]:
        """(stream, step) of a call for `key` at `sigma`; repeated (key, sigma) pairs get new streams."""
        sigma = float(sigma)
        occurrence = self._seen.get((key, sigma), 0)
        self._seen[(key, sigma)] = occurrence + 1
        return (key, occurrence), step_of_sigma(sigma, self.sigmas)


@dataclass
class _Stream:
    next_step: int = 0
    signature: tuple | None = None
    features: dict[str, Any] = field(default_factory=dict)


@dataclass
class CachedCall:
    """One UNet call: `partial` says whether to reuse `features` (else run fully and fill them)."""

    stream: Hashable
    step: int
    partial: bool
    signature: tuple
    features: dict[str, Any]


class FeatureStreams:
    """Per-run state: each stream's step counter, last full call's input signature and features."""

    def __init__(self, full_step_flags: Sequence[bool]):
        if not full_step_flags:
            raise ValueError("full_step_flags is empty: give one flag per sampling step")
        self.full_step_flags = [bool(flag) for flag in full_step_flags]
        self._streams: dict[Hashable, _Stream] = {}
        self.stats = {"full": 0, "partial": 0, "forced_full": 0}

    def begin(self, stream: Hashable, signature: tuple, step: int | None = None) -> CachedCall:
        """Start a call of `stream` at `step` (None: the stream's next step): full or partial."""
        state = self._streams.setdefault(stream, _Stream())
        step = state.next_step if step is None else step
        if not 0 <= step < len(self.full_step_flags):
            raise RuntimeError(
                f"feature cache: call at step {step} of stream {stream!r}, but the schedule has "
                f"{len(self.full_step_flags)} steps"
            )
        partial = not self.full_step_flags[step]
        if partial and signature != state.signature:
            partial = False
            self.stats["forced_full"] += 1
        self.stats["partial" if partial else "full"] += 1
        if not partial:  # the old features are gone; new ones count only once the call completes
            state.signature, state.features = None, {}
        state.next_step = step + 1
        return CachedCall(stream, step, partial, signature, state.features)

    def complete(self, call: CachedCall) -> None:
        """Mark a full call as finished: its features may now be reused by partial calls."""
        if not call.partial:
            self._streams[call.stream].signature = call.signature
