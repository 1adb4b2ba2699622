"""Patch a module's weights in place with mixed LoRAs; re-weight; restore bit-exactly.

Exact restore without a backup copy. Per weight W (dtype t) and fp32 delta D (recomputed
from the kept low-rank factors, same op order -> same bits):
    apply:   W' = t(W + D)           then check t(W' - D) == W bitwise
    restore: W  = t(W' - D)          then scatter the few originals where the check failed
Only the failing elements are stored (flat index + original value), and a per-weight
checksum of the original bits verifies each restore. Work is done in row chunks of one
weight, so temporaries stay a fraction of one layer. Every write is ``copy_`` / ``index_put_``
into the parameter's own storage: Parameter objects and data_ptrs never change, so compiled
or CUDA-graph-captured modules stay valid. Apply and re-weight are atomic: everything is
validated before the first write, and any exception (KeyboardInterrupt included) puts the
touched weights back before it propagates.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .formats import LoraFactors, LoraFile
from .keymap import FAMILIES, TargetIndex, family_class, family_of_lora_names
from .mix import LowRankPatch, compress_svd, mix_cat
from .report import AdapterReport, LoadReport

ProgressCallback = Callable[[int, int, str], None]
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}
CHUNK_ELEMENTS = 1 << 18  # elements per row chunk: reused buffers of ~1 MiB stay in cache


class LoraPatchError(ValueError):
    """A LoRA that cannot be applied to this module; nothing was changed."""


@dataclass
class PatchTarget:
    """One weight to patch and the adapters' factors for it (on the weight's device)."""

    param_name: str
    param: torch.nn.Parameter
    parts: list[tuple[int, LoraFactors]]  # (adapter index, factors)


@dataclass
class _LayerState:
    """What restoring one patched weight needs besides the factors."""

    patch: LowRankPatch
    index: torch.Tensor  # flat indices (sorted) where t(W' - D) != W
    values: torch.Tensor  # original values there
    checksum: torch.Tensor  # int64 sum of the original bit patterns

    @property
    def nbytes(self) -> int:
        return self.index.numel() * self.index.element_size() + self.values.numel() * self.values.element_size()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT_VIEW[t.element_size()])


def _rows_per_chunk(weight: torch.Tensor) -> int:
    row = max(1, weight[0].numel()) if weight.dim() else 1
    return max(1, CHUNK_ELEMENTS // row)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class _Workspace:
    """Chunk-sized buffers reused for every chunk of one weight: no allocator or page-fault cost
    per chunk, and never more than a few chunk-sized temporaries in memory."""

    def __init__(self, weight: torch.Tensor):
        self.step = _rows_per_chunk(weight)
        self.row_len = weight[0].numel() if weight.dim() else 1
        n = min(weight.shape[0], self.step) * self.row_len
        self.cdt = _compute_dtype(weight)
        kw = {"device": weight.device}
        self.delta = torch.empty(n, dtype=self.cdt, **kw)
        self.wide = torch.empty(n, dtype=self.cdt, **kw)
        self.narrow = torch.empty(n, dtype=weight.dtype, **kw)
        self.check = torch.empty(n, dtype=weight.dtype, **kw) if self.cdt != weight.dtype else self.wide
        self.mask = torch.empty(n, dtype=torch.bool, **kw)
        self.sum64 = torch.empty(n, dtype=torch.int64, **kw)

    def view(self, buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return buf[: like.numel()].view(like.shape)

    def delta_rows(self, patch: LowRankPatch, r0: int, r1: int, like: torch.Tensor) -> torch.Tensor:
        """D rows [r0, r1) in fp32 (fp64 for fp64 weights), computed the same way every time."""
        out = self.delta[: like.numel()].view(r1 - r0, -1)
        torch.mm(patch.up[r0:r1], patch.down, out=out)
        return out.view(like.shape)

    def round_sum(self, w: torch.Tensor, d: torch.Tensor, sign: int) -> torch.Tensor:
        """t(w + sign * d) in the narrow buffer (t = the weight's dtype)."""
        out = self.view(self.narrow, w)
        if self.cdt == w.dtype:
            return torch.add(w, d, alpha=sign, out=out)
        wide = self.view(self.wide, w)
        wide.copy_(w)
        wide.add_(d, alpha=sign)
        return out.copy_(wide)

    def round_back(self, patched: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """t(patched - d) in the check buffer: what a restore will compute."""
        wide = self.view(self.wide, patched)
        torch.sub(patched, d, out=wide) if self.cdt == patched.dtype else wide.copy_(patched).sub_(d)
        return wide if self.cdt == patched.dtype else self.view(self.check, patched).copy_(wide)

    def bit_sum(self, w: torch.Tensor) -> torch.Tensor:
        acc = self.view(self.sum64, w)
        acc.copy_(_bits(w))
        return acc.sum()


@torch.no_grad()
def patch_weight(weight: torch.Tensor, patch: LowRankPatch) -> _LayerState:
    """W <- t(W + D) in place, chunk by chunk; returns the sparse restore state. Atomic."""
    ws = _Workspace(weight)
    indices, values = [], []
    checksum = torch.zeros((), dtype=torch.int64, device=weight.device)
    done = 0
    try:
        for r0 in range(0, weight.shape[0], ws.step):
            r1 = min(weight.shape[0], r0 + ws.step)
            w = weight[r0:r1]
            d = ws.delta_rows(patch, r0, r1, w)
            patched = ws.round_sum(w, d, +1)
            back = ws.round_back(patched, d)
            mask = ws.view(ws.mask, w)
            torch.ne(_bits(back), _bits(w), out=mask)
            bad = mask.reshape(-1).nonzero().squeeze(1)
            if bad.numel():
                indices.append(bad + r0 * ws.row_len)
                values.append(w.reshape(-1)[bad])
            checksum += ws.bit_sum(w)
            w.copy_(patched)
            done = r1
    except BaseException:
        partial = _LayerState(patch, _cat(indices, torch.int64, weight), _cat(values, weight.dtype, weight), checksum)
        _unpatch_rows(weight, partial, done)
        raise
    index_dtype = torch.int32 if weight.numel() < 2**31 else torch.int64
    index = _cat(indices, torch.int64, weight).to(index_dtype)
    return _LayerState(patch, index, _cat(values, weight.dtype, weight), checksum)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype, device=like.device)


@torch.no_grad()
def _unpatch_rows(weight: torch.Tensor, state: _LayerState, end_row: int) -> None:
    """Restore rows [0, end_row) of a patched weight, chunk by chunk (same chunks as the apply)."""
    ws = _Workspace(weight)
    for r0 in range(0, end_row, ws.step):
        _unpatch_rows_range(weight, state, r0, min(end_row, r0 + ws.step), ws)


@torch.no_grad()
def _repatch_rows(weight: torch.Tensor, patch: LowRankPatch, end_row: int) -> None:
    """Re-apply rows [0, end_row) after an interrupted restore (bit-identical to the first apply)."""
    ws = _Workspace(weight)
    for r0 in range(0, end_row, ws.step):
        r1 = min(end_row, r0 + ws.step)
        w = weight[r0:r1]
        w.copy_(ws.round_sum(w, ws.delta_rows(patch, r0, r1, w), +1))


@torch.no_grad()
def unpatch_weight(weight: torch.Tensor, state: _LayerState, name: str = "") -> None:
    """Exact restore of one weight; atomic (an interrupted restore leaves it patched)."""
    ws = _Workspace(weight)
    done = 0
    checksum = torch.zeros((), dtype=torch.int64, device=weight.device)
    try:
        for r0 in range(0, weight.shape[0], ws.step):
            r1 = min(weight.shape[0], r0 + ws.step)
            _unpatch_rows_range(weight, state, r0, r1, ws)
            checksum += ws.bit_sum(weight[r0:r1])
            done = r1
    except BaseException:
        _repatch_rows(weight, state.patch, done)
        raise
    if not torch.equal(checksum, state.checksum):
        raise RuntimeError(
            f"Restoring weight '{name}' did not reproduce the original bits (checksum differs): the delta was "
            "not recomputed identically (different device, thread count or library between apply and restore?)."
        )


def _unpatch_rows_range(weight: torch.Tensor, state: _LayerState, r0: int, r1: int, ws: _Workspace) -> None:
    w = weight[r0:r1]
    w.copy_(ws.round_sum(w, ws.delta_rows(state.patch, r0, r1, w), -1))
    index = state.index
    bounds = torch.tensor([r0 * ws.row_len, r1 * ws.row_len], device=index.device, dtype=index.dtype)
    lo, hi = torch.searchsorted(index, bounds).tolist()
    if hi > lo:
        weight.index_put_(torch.unravel_index(index[lo:hi].long(), weight.shape), state.values[lo:hi])


class LoraPatcher:
    """Apply mixed LoRAs to a module's weights in place, re-weight them, restore exactly.

    ``module`` is a UNet with diffusers names or LDM names (e.g. ComfyUI's ``diffusion_model``,
    or a model holding it under a prefix). ``progress(done, total, name)`` is called per weight.
    """

    def __init__(self, module: torch.nn.Module, progress: ProgressCallback | None = None):
        self.module = module
        self.progress = progress
        self._params = dict(module.named_parameters())
        try:
            self.index = TargetIndex(list(self._params))
        except ValueError as exc:
            raise LoraPatchError(f"Cannot patch this {type(module).__name__}: {exc}") from None
        self._adapters: list[LoraFile] = []
        self._weights: list[float] = []
        self._rank: int | None = None
        self._targets: list[PatchTarget] = []
        self._states: dict[str, _LayerState] = {}
        self._report: LoadReport | None = None

    @property
    def is_applied(self) -> bool:
        return bool(self._states)

    @property
    def restore_state_bytes(self) -> int:
        return sum(s.nbytes for s in self._states.values())

    @property
    def weights(self) -> list[float]:
        """The weights of the applied adapters (empty when nothing is applied)."""
        return list(self._weights)

    @property
    def report(self) -> LoadReport | None:
        """The report of the applied patch, brought up to date (None when nothing is applied)."""
        return None if self._report is None else self._finish_report(self._report)

    def check(self, adapters: Sequence[tuple[LoraFile, float]], strict: bool = True) -> LoadReport:
        """Everything `apply` validates (names, shapes, family, factors, dtypes), without touching a
        weight: lets a host refuse a bad LoRA when it is chosen rather than when it is applied."""
        return self._plan(adapters, strict)[1]

    # ---------------------------------------------------------------- validation
    def _plan(self, adapters: Sequence[tuple[LoraFile, float]], strict: bool) -> tuple[list[PatchTarget], LoadReport]:
        """Resolve and check everything; touch nothing."""
        return plan_targets(self.index, self._params, adapters, strict)

    # ---------------------------------------------------------------- public API
    def apply(
        self, adapters: Sequence[tuple[LoraFile, float]], rank: int | None = None, strict: bool = True
    ) -> LoadReport:
        """Patch the module with sum_i weight_i * LoRA_i (one low-rank patch per weight).

        ``rank``: re-compress each weight's patch to this rank by SVD (error in the report).
        ``strict``: refuse LoRA UNet modules that match no weight (else they are reported).
        Applying again (same or other adapters) first restores the original weights exactly."""
        if rank is not None and rank < 1:
            raise LoraPatchError(f"rank must be a positive integer or None, got {rank}.")
        plan, report = self._plan(adapters, strict)
        device_factors = _move_factors(plan)
        if self.is_applied:
            self.restore()
        self._adapters = [lora for lora, _ in adapters]
        self._weights = [float(w) for _, w in adapters]
        self._rank = rank
        self._targets = device_factors
        self._patch_all(self._weights)
        report.rank = rank
        self._report = report
        return self._finish_report(report)

    def reweight(self, weights: Sequence[float]) -> LoadReport:
        """New weights for the applied adapters, without re-reading files. Atomic."""
        if not self.is_applied or self._report is None:
            raise LoraPatchError("reweight() needs an applied patch: call apply() first.")
        if len(weights) != len(self._weights):
            raise LoraPatchError(f"reweight() got {len(weights)} weights for {len(self._weights)} adapters.")
        for lora, weight in zip(self._adapters, weights):
            _check_weight(lora, weight)
        old = self._weights
        new = [float(w) for w in weights]
        done: list[PatchTarget] = []
        try:
            for n, target in enumerate(self._targets):
                self._swap(target, new)
                done.append(target)
                self._tick(n + 1, target.param_name)
        except BaseException:
            for target in reversed(done):
                self._swap(target, old)
            raise
        self._weights = new
        for a, w in zip(self._report.adapters, new):
            a.weight = w
        return self._finish_report(self._report)

    def restore(self) -> None:
        """Put every patched weight back to its original bits."""
        for n, target in enumerate(list(self._targets)):
            state = self._states.get(target.param_name)
            if state is not None:
                unpatch_weight(target.param.data, state, target.param_name)
                del self._states[target.param_name]
            self._tick(n + 1, target.param_name)
        self._targets, self._adapters, self._weights, self._report = [], [], [], None

    # ---------------------------------------------------------------- internals
    def _mixed(self, target: PatchTarget, weights: Sequence[float]) -> LowRankPatch:
        cdt = _compute_dtype(target.param)
        patch = mix_cat([(f, weights[i]) for i, f in target.parts], dtype=cdt)
        if self._rank is not None and self._rank < patch.rank:
            patch = compress_svd(patch, self._rank)
        return LowRankPatch(patch.up.contiguous(), patch.down.contiguous(), tuple(target.param.shape),
                            patch.relative_error)

    def _patch_all(self, weights: Sequence[float]) -> None:
        done: list[PatchTarget] = []
        try:
            for n, target in enumerate(self._targets):
                self._states[target.param_name] = patch_weight(target.param.data, self._mixed(target, weights))
                done.append(target)
                self._tick(n + 1, target.param_name)
        except BaseException:
            for target in reversed(done):
                unpatch_weight(target.param.data, self._states.pop(target.param_name), target.param_name)
            self._targets, self._adapters, self._weights = [], [], []
            raise

    def _swap(self, target: PatchTarget, weights: Sequence[float]) -> None:
        """Restore one weight and patch it with new weights (the weight is never left half-done)."""
        data = target.param.data
        unpatch_weight(data, self._states[target.param_name], target.param_name)
        try:
            self._states[target.param_name] = patch_weight(data, self._mixed(target, weights))
        except BaseException:
            self._states[target.param_name] = patch_weight(data, self._states[target.param_name].patch)
            raise

    def _tick(self, done: int, name: str) -> None:
        if self.progress is not None:
            self.progress(done, len(self._targets), name)

    def _finish_report(self, report: LoadReport) -> LoadReport:
        report.restore_state_bytes = self.restore_state_bytes
        report.exceptions = sum(s.index.numel() for s in self._states.values())
        report.patched_weight_bytes = sum(t.param.numel() * t.param.element_size() for t in self._targets)
        seen: set[int] = set()
        factor_bytes = 0
        for target in self._targets:
            for _, f in target.parts:
                for t in (f.down, f.up):
                    if id(t) not in seen:
                        seen.add(id(t))
                        factor_bytes += t.numel() * t.element_size()
        report.factor_bytes = factor_bytes
        report.max_relative_error = max((s.patch.relative_error for s in self._states.values()), default=0.0)
        return report


def plan_targets(
    index: TargetIndex, params: dict[str, torch.Tensor], adapters: Sequence[tuple[LoraFile, float]],
    strict: bool = True, check_dtypes: bool = True,
) -> tuple[list[PatchTarget], LoadReport]:
    """Resolve every adapter's UNet modules to the target's parameters and check names, shapes,
    family and factors, touching nothing: the one validation both the in-place patcher and a host's
    own patch mechanism (ComfyUI's) use. ``check_dtypes`` False leaves the weight dtype to the host."""
    if not adapters:
        raise LoraPatchError("At least one (lora, weight) pair is needed.")
    targets: dict[str, PatchTarget] = {}
    reports = []
    for n, (lora, weight) in enumerate(adapters):
        if not isinstance(lora, LoraFile):
            raise LoraPatchError(f"Adapter {n} is a {type(lora).__name__}, expected a LoraFile (use load_lora).")
        _check_weight(lora, weight)
        names = list(lora.unet)
        family = family_of_lora_names(names, index.layout.layers_per_block if index.layout else 2)
        report = AdapterReport(lora.name, float(weight), lora.format, family,
                               text_encoder_modules={k: len(v) for k, v in lora.text_encoders.items()},
                               ignored_keys=list(lora.ignored_keys))
        offending: list[str] = []  # first problem per kind, in file order
        mismatched = None
        for module_name, factors in lora.unet.items():
            param_name = index.resolve(module_name)
            if param_name is None:
                report.unmatched.append(module_name)
                offending.append(f"'{module_name}' (no such weight in the target)")
            elif _shape_problem(factors, params[param_name]):
                problem = (
                    f"'{module_name}' -> '{param_name}': LoRA delta shape {factors.delta_shape}, "
                    f"target weight shape {tuple(params[param_name].shape)}"
                )
                offending.append(problem)
                mismatched = mismatched or problem
            else:
                report.matched[module_name] = param_name
                targets.setdefault(param_name, PatchTarget(param_name, params[param_name], [])).parts.append(
                    (n, factors)
                )
        if offending and family in FAMILIES and index.family in FAMILIES and (
            family_class(family) != family_class(index.family)
        ):
            raise LoraPatchError(
                f"LoRA '{lora.path}' looks like a {family} LoRA but the target UNet is {index.family}: "
                f"first offending key {offending[0]}. Nothing was changed."
            )
        if mismatched:
            raise LoraPatchError(f"LoRA '{lora.path}' does not fit the target: {mismatched}. Nothing was changed.")
        if report.unmatched and strict:
            raise LoraPatchError(
                f"LoRA '{lora.path}': {len(report.unmatched)} UNet module(s) have no matching weight in the "
                f"target ({index.family}, {index.naming} names); first: '{report.unmatched[0]}'. "
                "Pass strict=False to apply the rest. Nothing was changed."
            )
        if lora.unet and not report.matched:
            raise LoraPatchError(
                f"LoRA '{lora.path}': none of its {len(lora.unet)} UNet modules match the target. Nothing was changed."
            )
        reports.append(report)
    plan = list(targets.values())
    for target in plan:
        if check_dtypes:
            _check_param(target.param_name, target.param)
        for _, factors in target.parts:
            if not (_all_finite(factors.down) and _all_finite(factors.up)):
                raise LoraPatchError(f"LoRA module '{factors.key}' has NaN or infinite factors. Nothing was changed.")
    report = LoadReport(index.family, index.naming, reports, [t.param_name for t in plan])
    return plan, report


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN / inf in `t`. A float32 sum propagates both and costs one vectorised pass (an
    elementwise isfinite over fp16 factors is several times slower on CPU); only a sum that
    overflows is looked at element by element."""
    total = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def _check_weight(lora: LoraFile, weight: float) -> None:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise LoraPatchError(f"Weight for LoRA '{lora.path}' must be a finite number, got {weight!r}.")


def _check_param(name: str, param: torch.Tensor) -> None:
    if param.dtype not in SUPPORTED_DTYPES:
        raise LoraPatchError(f"Target weight '{name}' has dtype {param.dtype}; supported: fp16, bf16, fp32, fp64.")
    if param.device.type == "meta":
        raise LoraPatchError(f"Target weight '{name}' is on the meta device (not materialised).")


def _shape_problem(factors: LoraFactors, param: torch.Tensor) -> str | None:
    """None if the LoRA's delta fits the weight (a 1x1 conv and a linear are interchangeable)."""
    lora, target = factors.delta_shape, tuple(param.shape)
    if lora == target:
        return None
    squeeze = lambda s: s[:2] if len(s) == 4 and s[2:] == (1, 1) else s  # noqa: E731
    if squeeze(lora) == squeeze(target) and len(squeeze(target)) == 2:
        return None
    return "the shapes differ"


def _move_factors(plan: list[PatchTarget]) -> list[PatchTarget]:
    """Factors on each weight's device (done before any weight is touched; each tensor moved once)."""
    moved: dict[tuple[int, torch.device], torch.Tensor] = {}

    def to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
        key = (id(t), device)
        if key not in moved:
            moved[key] = t.to(device)
        return moved[key]

    out = []
    for target in plan:
        dev = target.param.device
        parts = [
            (i, LoraFactors(f.key, to(f.down, dev), to(f.up, dev), f.alpha)) for i, f in target.parts
        ]
        out.append(PatchTarget(target.param_name, target.param, parts))
    return out
