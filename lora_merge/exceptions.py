"""Dense encoding of the in-place patcher's restore exceptions.

After W' = t(W + D), a restore computes B = t(W' - D). Where B != W (an "exception", a few % of
the elements for strong deltas), the original must be recovered. Instead of (int32 index,
original value) -- 6 bytes per fp16 exception -- we store per exception:

* its position as the gap to the previous exception (gap_k = i_k - i_{k-1} - 1) in the
  narrowest unsigned width w in {1, 2, 4, 8} bytes that makes the state smallest; a gap larger
  than the width holds is bridged by filler entries (gap = max, correction 0: a no-op);
* its correction in units of the last place: c = bits(W) - bits(B). A round trip that crossed
  one binade is off by one ULP, so |c| is almost always 1 and fits an int8. Anything else
  (|c| > 127, a sign change) is coded -128 and the original bit pattern goes into an escape
  list, in stream order (no index needed).

With ~2.5% exceptions (fp16, relative delta 3e-2) gaps average ~40, so one byte each: ~2 bytes
per exception instead of 6. Decoding is a cumulative sum, done on the weight's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ESCAPE = -128  # correction code: the original bits are in the escape list
_GAP_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # int16/int32 read as unsigned


@dataclass
class ExceptionCode:
    """The encoded exceptions of one weight (on the device chosen for the state)."""

    gaps: torch.Tensor  # (entries,) gap to the previous entry, width 1/2/4/8 bytes
    corrections: torch.Tensor  # (entries,) int8 ULP correction; 0 = filler, ESCAPE = see escapes
    escapes: torch.Tensor  # original bit patterns (weight's int view) of the escaped entries
    count: int  # real exceptions (fillers excluded)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gaps, self.corrections, self.escapes))

    def to(self, device: torch.device, pin: bool = False) -> ExceptionCode:
        move = lambda t: _pinned(t) if pin else t.to(device, non_blocking=True)  # noqa: E731
        return ExceptionCode(move(self.gaps), move(self.corrections), move(self.escapes), self.count)


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy, page-locked when CUDA is there (faster, asynchronous copies back)."""
    cpu = t.to("cpu")
    if torch.cuda.is_available():
        try:
            return cpu.pin_memory()
        except RuntimeError:  # no usable driver: plain host memory is still correct
            return cpu
    return cpu


def _max_gap(width: int) -> int:
    return (1 << (8 * width)) - 1 if width < 8 else (1 << 62)


def _fillers(gaps: torch.Tensor, width: int) -> int:
    """Filler entries a gap width needs: one per 2^(8 * width) positions skipped."""
    return 0 if width == 8 else int((gaps >> (8 * width)).sum())


def encode(index: torch.Tensor, original_bits: torch.Tensor, back_bits: torch.Tensor) -> ExceptionCode:
    """Encode sorted flat indices where original != back (both the weight's int view)."""
    index = index.long()
    n = index.numel()
    if n == 0:
        return ExceptionCode(
            index.new_empty(0, dtype=torch.uint8), index.new_empty(0, dtype=torch.int8), original_bits[:0], 0
        )
    gaps = torch.diff(index, prepend=index.new_full((1,), -1)) - 1
    correction = original_bits.long() - back_bits.long()  # a sign change always gives |c| > 127
    escaped = correction.abs() > 127
    codes = correction.clamp_(-128, 127).to(torch.int8)
    codes[escaped] = ESCAPE
    width = min(_GAP_DTYPES, key=lambda w: (n + _fillers(gaps, w)) * (w + 1))
    fillers = _fillers(gaps, width)
    if fillers:  # before each exception, gap // step fillers (gap = max, code 0); it keeps the rest
        step = _max_gap(width) + 1
        counts = gaps // step + 1
        last = torch.cumsum(counts, 0) - 1
        packed_gaps = torch.full((n + fillers,), step - 1, dtype=torch.int64, device=index.device)
        packed_gaps[last] = gaps - (counts - 1) * step
        packed_codes = torch.zeros(n + fillers, dtype=torch.int8, device=index.device)
        packed_codes[last] = codes
        gaps, codes = packed_gaps, packed_codes
    return ExceptionCode(gaps.to(_GAP_DTYPES[width]), codes, original_bits[escaped], n)


@dataclass
class Decoded:
    """Decoded exceptions of one weight: sorted flat positions and what to do at each."""

    positions: torch.Tensor  # int64, sorted
    corrections: torch.Tensor  # int8 ULP corrections, ESCAPE where the escape list has the bits
    escape_start: torch.Tensor  # int64 (entries + 1,): escapes used before entry k
    escapes: torch.Tensor

    def fix(self, back_bits: torch.Tensor, lo: int, hi: int, offset: int) -> None:
        """Turn round-tripped bits into the originals in place for entries [lo, hi); `back_bits`
        is the flat int view of the chunk that starts at flat index `offset`."""
        if hi <= lo:
            return
        local = self.positions[lo:hi] - offset
        corrections = self.corrections[lo:hi]
        fixed = back_bits[local] + corrections.to(back_bits.dtype)  # modular: exact where |c| <= 127
        e0, e1 = self.escape_start[lo].item(), self.escape_start[hi].item()
        if e1 > e0:
            fixed[corrections == ESCAPE] = self.escapes[e0:e1]
        back_bits[local] = fixed


def decode(code: ExceptionCode, device: torch.device) -> Decoded:
    """Decode on `device` (a state kept in host memory is moved there: only the exceptions move)."""
    gaps = code.gaps.to(device, non_blocking=True).long()
    width = code.gaps.element_size()
    if width in (2, 4):  # stored in a signed type: read back as unsigned
        gaps = gaps & _max_gap(width)
    positions = torch.cumsum(gaps + 1, 0) - 1
    corrections = code.corrections.to(device, non_blocking=True)
    keep = corrections != 0
    positions, corrections = positions[keep], corrections[keep]
    escape_start = torch.zeros(positions.numel() + 1, dtype=torch.int64, device=device)
    torch.cumsum(corrections == ESCAPE, 0, out=escape_start[1:])
    return Decoded(positions, corrections, escape_start, code.escapes.to(device, non_blocking=True))
