"""Patch a module's weights in place with mixed LoRAs; re-weight; restore bit-exactly.

Exact restore without a backup copy. Per weight W (dtype t) and fp32 delta D (recomputed
from the kept low-rank factors, same op order -> same bits):
    apply:    W' = t(W + D)           and note where t(W' - D) != W (the exceptions)
    restore:  W  = t(W' - D)          then put the exceptions right
    reweight: W  = t(W' - D_old) + exceptions, W'' = t(W + D_new), new exceptions: ONE pass per chunk
The exceptions (a few % of the elements for strong deltas) are encoded densely (exceptions.py:
gap to the previous one, usually 1 byte, and the correction in ULPs, 1 byte), and a per-weight
checksum of the original bits verifies each restore. For a weight on an accelerator the encoded
state lives in host memory (pinned), so a restore moves only the exceptions. Work is done in row
chunks of one weight, so temporaries stay a fraction of one layer. Every write is ``copy_`` into
the parameter's own storage: Parameter objects and data_ptrs never change, so compiled or
CUDA-graph-captured modules stay valid. Apply and re-weight are atomic: everything is validated
before the first write, and any exception (KeyboardInterrupt included) puts the touched weights
back before it propagates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .exceptions import ExceptionCode, decode, encode
from .formats import LoraFactors, LoraFile
from .keymap import FAMILIES, TargetIndex, family_class, family_of_lora_names
from .lycoris import AdapterModule, dora_factor
from .mix import LowRankPatch, compress_dense, compress_svd, mix_cat
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
    parts: list[tuple[int, LoraFactors | AdapterModule | BiasPart]]  # (adapter index, factors)


@dataclass
class BiasPart:
    """The bias delta of a LyCORIS module (diff_b or a LoRA up bias), as a part of a bias target."""

    module: AdapterModule

    @property
    def key(self) -> str:
        return self.module.key + " (bias)"


@dataclass
class _LayerState:
    """What restoring one patched weight needs besides the factors (in host memory for a weight
    on an accelerator: a restore then moves only the encoded exceptions)."""

    patch: LowRankPatch
    code: ExceptionCode  # where t(W' - D) != W, and how to get W back there
    checksum: int  # sum of the original bit patterns (int64 arithmetic)

    @property
    def nbytes(self) -> int:
        return self.code.nbytes

    @property
    def exceptions(self) -> int:
        return self.code.count


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT_VIEW[t.element_size()])


def _rows_per_chunk(weight: torch.Tensor) -> int:
    row = max(1, weight[0].numel()) if weight.dim() else 1
    return max(1, CHUNK_ELEMENTS // row)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _state_on_host(weight: torch.Tensor, on_host: bool | None) -> bool:
    """Keep the restore state in host memory? Automatic (None): yes for any weight not on the CPU."""
    return weight.device.type != "cpu" if on_host is None else on_host


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
        self.delta_new = torch.empty(n, dtype=self.cdt, **kw)  # re-weight: the new delta beside the old
        self.term = torch.empty(n, dtype=self.cdt, **kw)  # one adapter's product up_i @ down_i
        self.wide = torch.empty(n, dtype=self.cdt, **kw)
        self.narrow = torch.empty(n, dtype=weight.dtype, **kw)
        self.original = torch.empty(n, dtype=weight.dtype, **kw)  # re-weight: the rebuilt W rows
        self.check = torch.empty(n, dtype=weight.dtype, **kw)
        self.mask = torch.empty(n, dtype=torch.bool, **kw)
        self.dense: dict[int, torch.Tensor] = {}  # materialised dense deltas of this pass (one layer)

    def chunks(self, end_row: int):
        """(r0, r1) row ranges, the same for every pass over one weight."""
        for r0 in range(0, end_row, self.step):
            yield r0, min(end_row, r0 + self.step)

    def view(self, buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return buf[: like.numel()].view(like.shape)

    def delta_rows(self, patch: LowRankPatch, r0: int, r1: int, like: torch.Tensor) -> torch.Tensor:
        """D rows [r0, r1) in fp32 (fp64 for fp64 weights), computed the same way every time."""
        return self.delta_pair(patch, None, r0, r1, like)[0]

    def delta_pair(
        self, patch: LowRankPatch, new: LowRankPatch | None, r0: int, r1: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D rows of `patch` and, for a re-weight, of `new` when it has the same per-adapter terms:
        each product up_i @ down_i is computed once and accumulated with both weights, by the very
        op sequence delta_rows uses (so D_old has the bits the apply used)."""
        outs = [self.delta[: like.numel()].view(r1 - r0, -1)]
        patches = [patch]
        if new is not None:
            outs.append(self.delta_new[: like.numel()].view(r1 - r0, -1))
            patches.append(new)
        for out, p in zip(outs, patches):
            if p.rank:
                torch.mm(p.up[r0:r1], p.down, out=out)
            elif not p.terms:
                out.zero_()
        for i, (up, down) in enumerate(patch.terms or []):
            term = self.term[: like.numel()].view(r1 - r0, -1)
            if up.dtype == term.dtype:
                torch.mm(up[r0:r1], down, out=term)
            else:  # factors kept in the file's dtype: cast what this chunk multiplies
                torch.mm(up[r0:r1].to(term.dtype), down.to(term.dtype), out=term)
            for out, p in zip(outs, patches):
                weight = p.term_weights[i]
                if i == 0 and not p.rank:
                    torch.mul(term, weight, out=out)
                else:
                    out.add_(term, alpha=weight)
        for out, p in zip(outs, patches):
            if p.dense is not None:
                if id(p) not in self.dense:
                    self.dense[id(p)] = p.dense().reshape(p.shape[0], -1)
                out.add_(self.dense[id(p)][r0:r1])
        return outs[0].view(like.shape), (outs[1].view(like.shape) if new is not None else None)

    def round_sum(
        self,
        w: torch.Tensor,
        d: torch.Tensor,
        sign: int,
        into: torch.Tensor | None = None,
        coef: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """t(w + sign * d) in the narrow buffer (or `into`; t = the weight's dtype). With a DoRA
        coefficient c (rows of this chunk or one row for all): t(c * w + d), or t((w - d) / c)."""
        out = self.view(self.narrow if into is None else into, w)
        if coef is not None:
            wide = self.view(self.wide, w).view(w.shape[0], -1)
            wide.copy_(w.reshape(w.shape[0], -1))
            if sign > 0:
                wide.mul_(coef).add_(d.reshape(wide.shape))
            else:
                wide.sub_(d.reshape(wide.shape)).div_(coef)
            return out.copy_(wide.view(w.shape))
        if self.cdt == w.dtype:
            return torch.add(w, d, alpha=sign, out=out)
        wide = self.view(self.wide, w)
        wide.copy_(w)
        wide.add_(d, alpha=sign)
        return out.copy_(wide)

    def round_back(self, patched: torch.Tensor, d: torch.Tensor, coef: torch.Tensor | None = None) -> torch.Tensor:
        """t(patched - d) in the check buffer: what a restore will compute."""
        if coef is not None:
            return self.round_sum(patched, d, -1, self.check, coef)
        wide = self.view(self.wide, patched)
        torch.sub(patched, d, out=wide) if self.cdt == patched.dtype else wide.copy_(patched).sub_(d)
        return wide if self.cdt == patched.dtype else self.view(self.check, patched).copy_(wide)


def _same_terms(old: LowRankPatch, new: LowRankPatch) -> bool:
    """Do two patches share their per-adapter factors (a re-weight): then each product is computed once."""
    return bool(old.terms) and old.terms is new.terms and old.rank == 0 and new.rank == 0


def _coef_rows(patch: LowRankPatch, r0: int, r1: int) -> torch.Tensor | None:
    """The DoRA coefficient for rows [r0, r1) (a per-column coefficient is shared by all rows)."""
    if patch.coef is None:
        return None
    return patch.coef[r0:r1] if patch.coef.shape[0] > 1 else patch.coef


def _words(flat: torch.Tensor) -> torch.Tensor | None:
    """The leading whole 8-byte words of a contiguous 1-D tensor as int64 (None if misaligned)."""
    per = 8 // flat.element_size()
    usable = flat.numel() - flat.numel() % per
    head = flat[:usable]
    if usable == 0 or (head.storage_offset() * flat.element_size()) % 8:
        return None
    return head.view(torch.int64)


def _bit_sum(w: torch.Tensor) -> torch.Tensor:
    """Checksum of a chunk: the wrapping int64 sum of its bytes read as 8-byte words (elements past
    the last whole word: their bit patterns), so any changed bit perturbs it. Summing words is ~8x
    faster than widening every element; the value depends only on the chunk's contents."""
    flat = _bits(w).reshape(-1)
    words = _words(flat)
    if words is None and flat.numel() >= 8 // flat.element_size():
        words = _words(flat.clone())  # a misaligned view: same bytes, aligned copy
    if words is None:
        return flat.sum(dtype=torch.int64)
    tail = flat[words.numel() * (8 // flat.element_size()) :]
    return words.sum() + tail.sum(dtype=torch.int64)


def _differences(a: torch.Tensor, b: torch.Tensor, mask_buffer: torch.Tensor) -> torch.Tensor:
    """Sorted flat indices where the int views a and b differ. Compared 8 bytes at a time first
    (few words differ), then element by element inside the differing words only."""
    wa, wb = _words(a), _words(b)
    if wa is None or wb is None:
        mask = mask_buffer[: a.numel()]
        torch.ne(a, b, out=mask)
        return mask.nonzero().squeeze(1)
    mask = mask_buffer[: wa.numel()]
    torch.ne(wa, wb, out=mask)
    per = 8 // a.element_size()
    words = mask.nonzero().squeeze(1)
    candidates = (words[:, None] * per + torch.arange(per, device=a.device)).reshape(-1)
    tail = torch.arange(wa.numel() * per, a.numel(), device=a.device)
    candidates = torch.cat([candidates, tail]) if tail.numel() else candidates
    return candidates[a[candidates] != b[candidates]]


class _Exceptions:
    """Collects, chunk by chunk, where the round trip t(t(W + D) - D) misses W; encodes at the end."""

    def __init__(self, weight: torch.Tensor, on_host: bool | None):
        self.weight = weight
        self.on_host = _state_on_host(weight, on_host)
        self.index: list[torch.Tensor] = []
        self.original: list[torch.Tensor] = []
        self.back: list[torch.Tensor] = []
        self.checksum = torch.zeros((), dtype=torch.int64, device=weight.device)

    def add(self, ws: _Workspace, original: torch.Tensor, back: torch.Tensor, offset: int) -> None:
        ob, bb = _bits(original).reshape(-1), _bits(back).reshape(-1)
        bad = _differences(ob, bb, ws.mask)
        if bad.numel():
            self.index.append(bad + offset)
            self.original.append(ob[bad])
            self.back.append(bb[bad])
        self.checksum += _bit_sum(original)

    def state(self, patch: LowRankPatch) -> _LayerState:
        bits_dtype = _INT_VIEW[self.weight.element_size()]

        def cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(parts) if parts else torch.empty(0, dtype=dtype, device=self.weight.device)

        code = encode(cat(self.index, torch.int64), cat(self.original, bits_dtype), cat(self.back, bits_dtype))
        if self.on_host:
            code = code.to(torch.device("cpu"), pin=True)
        return _LayerState(patch, code, int(self.checksum))


@torch.no_grad()
def patch_weight(weight: torch.Tensor, patch: LowRankPatch, on_host: bool | None = None) -> _LayerState:
    """W <- t(W + D) in place, chunk by chunk; returns the encoded restore state. Atomic."""
    ws = _Workspace(weight)
    found = _Exceptions(weight, on_host)
    done = 0
    try:
        for r0, r1 in ws.chunks(weight.shape[0]):
            w = weight[r0:r1]
            d, c = ws.delta_rows(patch, r0, r1, w), _coef_rows(patch, r0, r1)
            patched = ws.round_sum(w, d, +1, coef=c)
            found.add(ws, w, ws.round_back(patched, d, c), r0 * ws.row_len)
            w.copy_(patched)
            done = r1
    except BaseException:
        _unpatch_rows(weight, found.state(patch), done)
        raise
    return found.state(patch)


class _Restorer:
    """Rebuilds the original rows of a patched weight, chunk by chunk, from its state."""

    def __init__(self, weight: torch.Tensor, state: _LayerState):
        self.state = state
        self.decoded = decode(state.code, weight.device)

    def original_rows(
        self,
        ws: _Workspace,
        w: torch.Tensor,
        r0: int,
        r1: int,
        into: torch.Tensor | None = None,
        delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """W rows [r0, r1) = t(W' - D) with the exceptions put right, in a workspace buffer."""
        patch = self.state.patch
        d = ws.delta_rows(patch, r0, r1, w) if delta is None else delta
        back = ws.round_sum(w, d, -1, into, _coef_rows(patch, r0, r1))
        lo_hi = torch.tensor([r0 * ws.row_len, r1 * ws.row_len], device=w.device)
        lo, hi = torch.searchsorted(self.decoded.positions, lo_hi).tolist()
        self.decoded.fix(_bits(back).view(-1), lo, hi, r0 * ws.row_len)
        return back


@torch.no_grad()
def _unpatch_rows(weight: torch.Tensor, state: _LayerState, end_row: int) -> None:
    """Restore rows [0, end_row) of a patched weight, chunk by chunk (same chunks as the apply)."""
    ws = _Workspace(weight)
    restorer = _Restorer(weight, state)
    for r0, r1 in ws.chunks(end_row):
        w = weight[r0:r1]
        w.copy_(restorer.original_rows(ws, w, r0, r1))


@torch.no_grad()
def _repatch_rows(weight: torch.Tensor, patch: LowRankPatch, end_row: int) -> None:
    """Re-apply rows [0, end_row) after an interrupted restore (bit-identical to the first apply)."""
    ws = _Workspace(weight)
    for r0, r1 in ws.chunks(end_row):
        w = weight[r0:r1]
        w.copy_(ws.round_sum(w, ws.delta_rows(patch, r0, r1, w), +1, coef=_coef_rows(patch, r0, r1)))


def _checksum_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"Restoring weight '{name}' did not reproduce the original bits (checksum differs): the delta was "
        "not recomputed identically (different device, thread count or library between apply and restore?)."
    )


@torch.no_grad()
def unpatch_weight(weight: torch.Tensor, state: _LayerState, name: str = "") -> None:
    """Exact restore of one weight; atomic (an interrupted restore leaves it patched)."""
    ws = _Workspace(weight)
    restorer = _Restorer(weight, state)
    done = 0
    checksum = torch.zeros((), dtype=torch.int64, device=weight.device)
    try:
        for r0, r1 in ws.chunks(weight.shape[0]):
            w = weight[r0:r1]
            w.copy_(restorer.original_rows(ws, w, r0, r1))
            checksum += _bit_sum(w)
            done = r1
    except BaseException:
        _repatch_rows(weight, state.patch, done)
        raise
    if int(checksum) != state.checksum:
        raise _checksum_error(name)


@torch.no_grad()
def reweight_weight(
    weight: torch.Tensor, state: _LayerState, patch: LowRankPatch, name: str = "", on_host: bool | None = None
) -> _LayerState:
    """t(W + D_old) -> t(W + D_new) in ONE pass per chunk: W rows rebuilt exactly (old exceptions),
    then patched with the new delta (new exceptions). Atomic: an interruption puts the rows done
    back to t(W + D_old), so the old state stays valid."""
    ws = _Workspace(weight)
    restorer = _Restorer(weight, state)
    found = _Exceptions(weight, on_host)
    shared = _same_terms(state.patch, patch)
    done = 0
    try:
        for r0, r1 in ws.chunks(weight.shape[0]):
            w = weight[r0:r1]
            if shared:
                d_old, d = ws.delta_pair(state.patch, patch, r0, r1, w)
                original = restorer.original_rows(ws, w, r0, r1, into=ws.original, delta=d_old)
            else:
                original = restorer.original_rows(ws, w, r0, r1, into=ws.original)
                d = ws.delta_rows(patch, r0, r1, w)
            c = _coef_rows(patch, r0, r1)
            patched = ws.round_sum(original, d, +1, coef=c)
            found.add(ws, original, ws.round_back(patched, d, c), r0 * ws.row_len)
            w.copy_(patched)
            done = r1
        if int(found.checksum) != state.checksum:
            raise _checksum_error(name)
    except BaseException:
        _unpatch_rows(weight, found.state(patch), done)
        _repatch_rows(weight, state.patch, done)
        raise
    return found.state(patch)


class PatchBuilder:
    """Builds each weight's ONE patch from its plan parts and their weights: low-rank parts
    concatenated, the others summed densely (one layer, on demand); with a rank, SVD-compressed (its
    error reported). Keeps, per weight, what a re-weight reuses: the adapters' unweighted factors
    (each product is then computed once for the old and the new weights) and DoRA's factor, taken
    from the ORIGINAL weight at the first build (`fresh=True` forgets it: the weight is original again)."""

    def __init__(self, rank: int | None = None):
        self.rank = rank
        self._dora_k: dict[str, torch.Tensor] = {}
        self._terms: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def nbytes(self) -> int:
        """Host memory of the kept DoRA factors (part of the restore state)."""
        return sum(k.numel() * k.element_size() for k in self._dora_k.values())

    def build(
        self, name: str, param: torch.Tensor, parts: Sequence[tuple[object, float]], fresh: bool = False
    ) -> LowRankPatch:
        if fresh:
            self._dora_k.pop(name, None)
        cdt = _compute_dtype(param)
        shape = tuple(param.shape)
        flat = (shape[0], param[0].numel() if param.dim() > 1 else 1)
        dora = [(f, w) for f, w in parts if isinstance(f, AdapterModule) and f.dora_scale is not None]
        if dora:
            return self._dora_patch(name, param, dora[0][0], dora[0][1], flat, cdt)
        low = [(f, w) for f, w in parts if _as_factors(f) is not None]
        dense = [(f, w) for f, w in parts if _as_factors(f) is None]
        device = param.device
        up = torch.empty(flat[0], 0, dtype=cdt, device=device)
        down = torch.empty(0, flat[1], dtype=cdt, device=device)
        terms, term_weights = None, ()
        if low and self.rank is None:  # exact: per-adapter terms, kept unweighted for re-weighting
            if name not in self._terms:
                self._terms[name] = [_term(_as_factors(f), flat) for f, _ in low]
            terms, term_weights = self._terms[name], tuple(float(w) * _as_factors(f).scale for f, w in low)
        elif low:
            patch = mix_cat([(_as_factors(f), w) for f, w in low], dtype=cdt)
            up, down = patch.up.reshape(flat[0], -1), patch.down.reshape(-1, flat[1])
        dense_fn = _dense_sum(dense, flat, cdt) if dense else None
        patch = LowRankPatch(
            up.contiguous(), down.contiguous(), shape, 0.0, dense_fn, terms=terms, term_weights=term_weights
        )
        if self.rank is not None and param.dim() > 1:
            if patch.dense is not None:
                patch = compress_dense(patch, self.rank)
            elif self.rank < patch.rank:
                patch = compress_svd(patch, self.rank)
            patch = LowRankPatch(patch.up.contiguous(), patch.down.contiguous(), shape, patch.relative_error)
        return patch

    def _dora_patch(
        self,
        name: str,
        param: torch.Tensor,
        module: AdapterModule,
        strength: float,
        flat: tuple[int, int],
        cdt: torch.dtype,
    ) -> LowRankPatch:
        """DoRA at strength s: W' = W + s (k (W + D) - W) = (1 - s + s k) W + s k D, with
        k = dora_scale / norm fixed at the first apply (from the original weight) and kept, so a
        re-weight or restore never needs the original W. Never SVD-compressed (not additive)."""
        if name not in self._dora_k:
            self._dora_k[name] = dora_factor(param.data, module, flat, _rows_per_chunk(param))
        k = self._dora_k[name]
        sk = k * strength
        device = param.device

        def dense() -> torch.Tensor:
            return module.weight_delta(flat, device, cdt).mul_(sk)

        empty_up = torch.empty(flat[0], 0, dtype=cdt, device=device)
        empty_down = torch.empty(0, flat[1], dtype=cdt, device=device)
        return LowRankPatch(empty_up, empty_down, tuple(param.shape), 0.0, dense, (1.0 - strength) + sk)


class LoraPatcher:
    """Apply mixed LoRAs to a module's weights in place, re-weight them, restore exactly.

    ``module`` is a UNet with diffusers names or LDM names (e.g. ComfyUI's ``diffusion_model``,
    or a model holding it under a prefix). ``progress(done, total, name)`` is called per weight.
    ``params``: the {name: Parameter} to patch instead of ``module.named_parameters()`` (a host
    whose layers may be swapped passes its own view). ``state_on_host``: keep the restore state
    in host memory (None: automatically for weights not on the CPU; pinned when CUDA is there).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        progress: ProgressCallback | None = None,
        params: dict[str, torch.nn.Parameter] | None = None,
        state_on_host: bool | None = None,
    ):
        self.module = module
        self.progress = progress
        self.state_on_host = state_on_host
        self._params = dict(module.named_parameters()) if params is None else dict(params)
        try:
            self.index = TargetIndex(list(self._params))
        except ValueError as exc:
            raise LoraPatchError(f"Cannot patch this {type(module).__name__}: {exc}") from None
        self._adapters: list[LoraFile] = []
        self._weights: list[float] = []
        self._rank: int | None = None
        self._targets: list[PatchTarget] = []
        self._states: dict[str, _LayerState] = {}
        self._builder = PatchBuilder()  # per weight: adapters' factors, DoRA's factor from the original
        self._report: LoadReport | None = None

    @property
    def is_applied(self) -> bool:
        return bool(self._states)

    @property
    def restore_state_bytes(self) -> int:
        return sum(s.nbytes for s in self._states.values()) + self._builder.nbytes

    @property
    def weights(self) -> list[float]:
        """The weights of the applied adapters (empty when nothing is applied)."""
        return list(self._weights)

    @property
    def report(self) -> LoadReport | None:
        """The report of the applied patch, brought up to date (None when nothing is applied)."""
        return None if self._report is None else self._finish_report(self._report)

    def forget(self) -> None:
        """Drop everything about the applied patch without touching a weight: for a host that has
        replaced the weights' storage itself (an unload, a reload), where a restore would be wrong."""
        self._targets, self._adapters, self._weights, self._report = [], [], [], None
        self._states, self._builder = {}, PatchBuilder()

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
                self._swap(target, self._mixed(target, new))
                done.append(target)
                self._tick(n + 1, target.param_name)
        except BaseException:
            for target in reversed(done):
                self._swap(target, self._mixed(target, old))
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
        self._builder = PatchBuilder()

    # ---------------------------------------------------------------- internals
    def _mixed(self, target: PatchTarget, weights: Sequence[float]) -> LowRankPatch:
        return self._builder.build(target.param_name, target.param, [(f, weights[i]) for i, f in target.parts])

    def _patch_all(self, weights: Sequence[float]) -> None:
        self._builder = PatchBuilder(self._rank)
        done: list[PatchTarget] = []
        try:
            for n, target in enumerate(self._targets):
                self._states[target.param_name] = patch_weight(
                    target.param.data, self._mixed(target, weights), self.state_on_host
                )
                done.append(target)
                self._tick(n + 1, target.param_name)
        except BaseException:
            for target in reversed(done):
                unpatch_weight(target.param.data, self._states.pop(target.param_name), target.param_name)
            self._targets, self._adapters, self._weights = [], [], []
            raise

    def _swap(self, target: PatchTarget, patch: LowRankPatch) -> None:
        """Re-patch one weight with a new delta in one fused pass (atomic per weight)."""
        name = target.param_name
        self._states[name] = reweight_weight(target.param.data, self._states[name], patch, name, self.state_on_host)

    def _tick(self, done: int, name: str) -> None:
        if self.progress is not None:
            self.progress(done, len(self._targets), name)

    def _finish_report(self, report: LoadReport) -> LoadReport:
        report.restore_state_bytes = self.restore_state_bytes
        report.exceptions = sum(s.exceptions for s in self._states.values())
        report.patched_weight_bytes = sum(t.param.numel() * t.param.element_size() for t in self._targets)
        seen: set[int] = set()
        factor_bytes = 0
        for target in self._targets:
            for _, f in target.parts:
                for t in _part_tensors(f):
                    if id(t) not in seen:
                        seen.add(id(t))
                        factor_bytes += t.numel() * t.element_size()
        report.factor_bytes = factor_bytes
        report.max_relative_error = max((s.patch.relative_error for s in self._states.values()), default=0.0)
        return report


def plan_targets(
    index: TargetIndex,
    params: dict[str, torch.Tensor],
    adapters: Sequence[tuple[LoraFile, float]],
    strict: bool = True,
    check_dtypes: bool = True,
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
        report = AdapterReport(
            lora.name,
            float(weight),
            lora.format,
            family,
            text_encoder_modules={k: len(v) for k, v in lora.text_encoders.items()},
            ignored_keys=list(lora.ignored_keys),
        )
        offending: list[str] = []  # first problem per kind, in file order
        mismatched = None
        for module_name, factors in lora.unet.items():
            param_name = index.resolve(module_name)
            parts = _module_parts(module_name, factors, param_name, params) if param_name else []
            if param_name is None:
                report.unmatched.append(module_name)
                offending.append(f"'{module_name}' (no such weight in the target)")
            elif isinstance(parts, str):
                offending.append(parts)
                mismatched = mismatched or parts
            else:
                report.matched[module_name] = param_name
                for name, part in parts:
                    targets.setdefault(name, PatchTarget(name, params[name], [])).parts.append((n, part))
        if (
            offending
            and family in FAMILIES
            and index.family in FAMILIES
            and (family_class(family) != family_class(index.family))
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
        dora = [f for _, f in target.parts if isinstance(f, AdapterModule) and f.dora_scale is not None]
        if dora and len(target.parts) > 1:
            raise LoraPatchError(
                f"LoRA module '{dora[0].key}' is DoRA and another adapter patches the same weight "
                f"'{target.param_name}': DoRA is not additive, apply it alone on its layers. Nothing was changed."
            )
        for _, factors in target.parts:
            if not all(_all_finite(t) for t in _part_tensors(factors)):
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


def part_delta(
    part, shape: tuple[int, ...], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The additive delta of one plan part (LoraFactors, AdapterModule or BiasPart) at weight 1, alpha
    scale included, reshaped to the target's `shape`: for a host's own patch mechanism (ComfyUI's
    add_patches). DoRA is not additive (LoraPatchError): a host applies it through LoraPatcher."""
    if isinstance(part, BiasPart):
        return part.module.bias_delta(device, dtype).reshape(shape)
    factors = _as_factors(part)
    if factors is not None:
        up, down = factors.up.to(device, dtype).flatten(1), factors.down.to(device, dtype).flatten(1)
        return (up @ down).mul_(factors.scale).reshape(shape)
    if part.dora_scale is not None:
        raise LoraPatchError(f"LoRA module '{part.key}' is DoRA: its patch is not an additive delta.")
    return part.weight_delta(shape, device, dtype)


def _term(factors: LoraFactors, flat: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter's (up, down) flattened to the weight's rows: views of the file's own tensors, in the
    file's dtype (no second copy of the LoRA is kept; a chunk casts what it multiplies). Its alpha / r
    scale goes into the term's weight."""
    return factors.up.reshape(flat[0], -1), factors.down.reshape(-1, flat[1])


def _as_factors(part) -> LoraFactors | None:
    """The low-rank factors of a part that is a plain LoRA (None for the dense kinds and DoRA)."""
    if isinstance(part, LoraFactors):
        return part
    if isinstance(part, AdapterModule) and part.kind == "lora" and part.dora_scale is None:
        t = part.tensors
        return LoraFactors(part.key, t["down"], t["up"], part.alpha if part.alpha is not None else float(part.rank))
    return None


def _part_tensors(part) -> list[torch.Tensor]:
    if isinstance(part, LoraFactors):
        return [part.down, part.up]
    module = part.module if isinstance(part, BiasPart) else part
    return module.tensors_for_checks()


def _dense_sum(parts: list, flat: tuple[int, int], cdt: torch.dtype) -> Callable[[], torch.Tensor]:
    """A function that materialises sum_i weight_i * delta_i of the dense parts of one layer."""

    def dense() -> torch.Tensor:
        total = None
        for part, weight in parts:
            if isinstance(part, BiasPart):
                d = part.module.bias_delta(part.module.bias.device, cdt).reshape(flat)
            else:
                d = part.weight_delta(flat, part.tensors[next(iter(part.tensors))].device, cdt)
            d.mul_(weight)
            total = d if total is None else total.add_(d)
        return total

    return dense


def _module_parts(module_name: str, factors, param_name: str, params: dict) -> list[tuple[str, object]] | str:
    """(parameter, part) pairs one LoRA module patches, or a one-line problem (shape, no bias)."""
    param = params[param_name]
    if not isinstance(factors, AdapterModule):
        if _shape_problem(factors, param):
            return (
                f"'{module_name}' -> '{param_name}': LoRA delta shape {factors.delta_shape}, "
                f"target weight shape {tuple(param.shape)}"
            )
        return [(param_name, factors)]
    parts: list[tuple[str, object]] = []
    if factors.has_weight:
        if not factors.fits(tuple(param.shape)):
            return (
                f"'{module_name}' -> '{param_name}': {factors.kind} delta of "
                f"{'x'.join(map(str, factors.weight_delta_numel_shape()))} (rows x elements per row), "
                f"target weight shape {tuple(param.shape)}"
            )
        if factors.dora_scale is not None and factors.dora_scale.numel() not in (param.shape[0], _per_row(param)):
            return (
                f"'{module_name}' -> '{param_name}': dora_scale of shape {tuple(factors.dora_scale.shape)} "
                f"fits neither the rows nor the columns of the weight {tuple(param.shape)}"
            )
        parts.append((param_name, factors))
    if factors.bias is not None:
        bias_name = param_name[: -len("weight")] + "bias"
        bias = params.get(bias_name)
        if bias is None or bias.numel() != factors.bias.numel():
            found = "has no bias" if bias is None else f"has a bias of {bias.numel()} elements"
            return (
                f"'{module_name}' -> '{bias_name}': bias delta of {factors.bias.numel()} elements, but the "
                f"target layer {found}"
            )
        parts.append((bias_name, BiasPart(factors)))
    return parts


def _per_row(param: torch.Tensor) -> int:
    return int(param.shape[1]) if param.dim() > 1 else 1


def _shape_problem(factors: LoraFactors, param: torch.Tensor) -> str | None:
    """None if the LoRA's delta fits the weight (a 1x1 conv and a linear are interchangeable)."""
    lora, target = factors.delta_shape, tuple(param.shape)
    if lora == target:
        return None
    squeeze = lambda s: s[:2] if len(s) == 4 and s[2:] == (1, 1) else s  # noqa: E731
    if squeeze(lora) == squeeze(target) and len(squeeze(target)) == 2:
        return None
    return "the shapes differ"


def part_on(part, device: torch.device, moved: dict | None = None):
    """A plan part (LoraFactors, AdapterModule or BiasPart) with its tensors on `device`; `moved`
    caches tensors already moved, so a tensor shared by several parts is moved once."""
    moved = {} if moved is None else moved

    def to(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        key = (id(t), device)
        if key not in moved:
            moved[key] = t.to(device)
        return moved[key]

    if isinstance(part, LoraFactors):
        return LoraFactors(part.key, to(part.down), to(part.up), part.alpha)
    module = part.module if isinstance(part, BiasPart) else part
    copy = AdapterModule(
        module.key,
        module.kind,
        {k: to(v) for k, v in module.tensors.items()},
        module.alpha,
        None if module.dora_scale is None else to(module.dora_scale),
        None if module.bias is None else to(module.bias),
        dict(module.extra),
    )
    return BiasPart(copy) if isinstance(part, BiasPart) else copy


def _move_factors(plan: list[PatchTarget]) -> list[PatchTarget]:
    """Factors on each weight's device (done before any weight is touched; each tensor moved once)."""
    moved: dict = {}
    return [
        PatchTarget(t.param_name, t.param, [(i, part_on(f, t.param.device, moved)) for i, f in t.parts]) for t in plan
    ]
