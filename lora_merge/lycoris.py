"""LyCORIS-family adapters as ComfyUI loads them: LoHa, LoKr, full diff, LoRA bias, DoRA.

Each module's weight delta is materialised in fp32 for ONE layer at a time (the patcher asks for
it while it patches that layer), with ComfyUI's scale rules:
    LoRA   D = (alpha / r) * up @ down                      r = down.shape[0]
    LoHa   D = (alpha / r) * (w1a @ w1b) * (w2a @ w2b)      r = w1b.shape[0]; Tucker: t1/t2 cores
    LoKr   D = s * kron(w1, w2)                             w_i = w_i_a @ w_i_b where decomposed;
           s = alpha / dim, dim = w2_b.shape[0] if w2 is decomposed, else w1_b.shape[0] if w1 is,
           else s = 1 (alpha ignored); a 4-D w2 makes w1 (a, b, 1, 1); t2 = Tucker core of w2
    diff   D = diff                                         (diff_b: bias delta)
    bias   D_bias = (alpha / r) * lora_up.bias             (peft's lora_bias; ComfyUI ignores it)
A missing alpha gives scale 1. Tucker: m = einsum('ijkl,jr,ip->prkl', t, w_b, w_a).
DoRA (``dora_scale`` on a LoRA / LoHa / LoKr) is not additive: see patcher.DoraPatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KINDS = ("lora", "loha", "lokr", "diff", "bias")


@dataclass
class AdapterModule:
    """One UNet module's adapter other than a plain LoRA (kind in KINDS; 'bias': only a bias delta)."""

    key: str
    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None  # diff_b, or the LoRA up bias (scaled like the LoRA)
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------ shape and scale
    @property
    def has_weight(self) -> bool:
        return self.kind != "bias"

    @property
    def out_features(self) -> int:
        """Rows of the weight delta (or length of the bias delta)."""
        if not self.has_weight:
            return int(self.bias.shape[0])
        return int(self.weight_delta_numel_shape()[0])

    def weight_delta_numel_shape(self) -> tuple[int, int]:
        """(rows, elements per row) of the weight delta, from the factor shapes alone."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["up"].shape[0]), int(t["down"][0].numel())
        if self.kind == "diff":
            return int(t["diff"].shape[0]), int(t["diff"][0].numel())
        if self.kind == "loha":
            if "hada_t1" in t:  # Tucker: w_a (r, out), w_b (r, in), t (r, r, kh, kw)
                return int(t["hada_w1_a"].shape[1]), int(t["hada_w1_b"].shape[1] * t["hada_t1"][0, 0].numel())
            return int(t["hada_w1_a"].shape[0]), int(t["hada_w1_b"].shape[1])
        w1, w2 = self._lokr_shape(1), self._lokr_shape(2)
        rest = 1
        for d in w2[1:]:
            rest *= d
        return w1[0] * w2[0], w1[1] * rest

    def _lokr_shape(self, i: int) -> tuple[int, ...]:
        t = self.tensors
        if f"lokr_w{i}" in t:
            return tuple(int(d) for d in t[f"lokr_w{i}"].shape)
        a, b = t[f"lokr_w{i}_a"], t[f"lokr_w{i}_b"]
        if i == 2 and "lokr_t2" in t:
            return (int(a.shape[1]), int(b.shape[1]), *map(int, t["lokr_t2"].shape[2:]))
        return int(a.shape[0]), int(b.shape[1])

    @property
    def scale(self) -> float:
        """ComfyUI's alpha rule for this kind (1 where alpha is absent or not used)."""
        t = self.tensors
        if self.kind == "diff" or self.alpha is None:
            return 1.0
        if self.kind in ("lora", "bias"):
            return self.alpha / self.extra["rank"] if "rank" in self.extra else 1.0
        if self.kind == "loha":
            return self.alpha / int(t["hada_w1_b"].shape[0])
        dim = None
        if "lokr_w1" not in t:
            dim = int(t["lokr_w1_b"].shape[0])
        if "lokr_w2" not in t:
            dim = int(t["lokr_w2_b"].shape[0])
        return 1.0 if dim is None else self.alpha / dim

    @property
    def rank(self) -> int:
        """Rank for reports (0 for a full delta)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        return 0

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Does the weight delta fit a weight of this shape (same rows and elements)?"""
        rows, per_row = self.weight_delta_numel_shape()
        numel = 1
        for d in shape[1:]:
            numel *= d
        return rows == shape[0] and per_row == numel

    def tensors_for_checks(self) -> list[torch.Tensor]:
        out = list(self.tensors.values())
        out += [t for t in (self.dora_scale, self.bias) if t is not None]
        return out

    # ------------------------------------------------------------ deltas
    def weight_delta(
        self, shape: tuple[int, ...], device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The scaled weight delta, reshaped to `shape` (one layer, materialised)."""
        t = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}
        if self.kind == "lora":
            d = t["up"].flatten(1) @ t["down"].flatten(1)
        elif self.kind == "diff":
            d = t["diff"]
        elif self.kind == "loha":
            d = _hada(t, 1) * _hada(t, 2)
        else:
            w1, w2 = _lokr(t, 1), _lokr(t, 2)
            if w2.dim() == 4 and w1.dim() == 2:
                w1 = w1[:, :, None, None]
            d = torch.kron(w1.contiguous(), w2.contiguous())  # kron refuses some strided einsum outputs
        return (d.reshape(shape) * self.scale) if self.scale != 1.0 else d.reshape(shape).clone()

    def bias_delta(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = self.scale if self.extra.get("bias_scaled") else 1.0
        return self.bias.to(device=device, dtype=dtype).reshape(-1) * scale


def _tucker(core: torch.Tensor, w_b: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) = sum_ij core[i, j] * w_a[i, :]^T w_b[j, :] (LyCORIS' CP layout)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, w_b, w_a)


def _hada(t: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    if f"hada_t{i}" in t:
        return _tucker(t[f"hada_t{i}"], t[f"hada_w{i}_b"], t[f"hada_w{i}_a"])
    return t[f"hada_w{i}_a"] @ t[f"hada_w{i}_b"]


def _lokr(t: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    if f"lokr_w{i}" in t:
        return t[f"lokr_w{i}"]
    if i == 2 and "lokr_t2" in t:
        return _tucker(t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
    return t[f"lokr_w{i}_a"] @ t[f"lokr_w{i}_b"]


LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def build_module(path: str, name: str, slot: dict[str, torch.Tensor]) -> AdapterModule:
    """An AdapterModule from one module's tensors (roles as in formats._SUFFIXES); one-line
    LoraFileError naming the file and module for anything inconsistent."""
    from .safetensors_io import LoraFileError

    def fail(why: str) -> LoraFileError:
        return LoraFileError(f"LoRA file '{path}': module '{name}' {why}")

    for role, tensor in slot.items():
        if not tensor.is_floating_point():
            raise fail(f"has a non-float '{role}' tensor ({tensor.dtype}).")
    alpha = None
    if "alpha" in slot:
        if slot["alpha"].numel() != 1:
            raise fail(f"has a non-scalar alpha {tuple(slot['alpha'].shape)}.")
        alpha = float(slot["alpha"].float().reshape(-1)[0])
    dora = slot.get("dora_scale")
    bias = slot.get("diff_b", slot.get("bias"))
    if "hada_w1_a" in slot:
        kind, keys = "loha", [k for k in LOHA_KEYS + ("hada_t1", "hada_t2") if k in slot]
        missing = [k for k in LOHA_KEYS if k not in slot]
        missing += ["hada_t2"] if "hada_t1" in slot and "hada_t2" not in slot else []
    elif any(k in slot for k in LOKR_KEYS):
        kind, keys = "lokr", [k for k in LOKR_KEYS if k in slot]
        missing = [
            f"lokr_w{i}"
            for i in (1, 2)
            if f"lokr_w{i}" not in slot and not (f"lokr_w{i}_a" in slot and f"lokr_w{i}_b" in slot)
        ]
    elif "diff" in slot:
        kind, keys, missing = "diff", ["diff"], []
    elif "down" in slot or "up" in slot:
        kind, keys = "lora", [k for k in ("down", "up") if k in slot]
        missing = [k for k in ("down", "up") if k not in slot]
    elif bias is not None:
        kind, keys, missing = "bias", [], []
    else:
        raise fail(f"has only {sorted(slot)} and no weight or bias delta.")
    if missing:
        raise fail(f"is a {kind} adapter without '{missing[0]}'.")
    module = AdapterModule(name, kind, {k: slot[k] for k in keys}, alpha, dora, bias)
    if kind == "lora":
        down, up = slot["down"], slot["up"]
        if up.shape[1] != down.shape[0]:
            raise fail(f"has mismatched factors: down {tuple(down.shape)}, up {tuple(up.shape)}.")
        module.extra["rank"] = int(down.shape[0])
        module.extra["bias_scaled"] = "bias" in slot  # the LoRA up bias is scaled like the LoRA
    try:  # materialise tiny shape checks without the arithmetic: products must be defined
        _check_products(module)
    except (RuntimeError, IndexError, KeyError) as exc:
        raise fail(f"has {kind} factors of inconsistent shapes ({_shapes(slot)}): {exc}") from None
    if bias is not None and bias.dim() != 1 and not (bias.dim() == 2 and 1 in bias.shape):
        raise fail(f"has a bias delta of shape {tuple(bias.shape)}; expected a vector.")
    return module


def _shapes(slot: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in slot.items() if k != "alpha")


def _check_products(module: AdapterModule) -> None:
    """Run the delta's products on the meta device: shape errors without any arithmetic."""
    if not module.has_weight:
        return
    meta = AdapterModule(
        module.key, module.kind, {k: v.to("meta") for k, v in module.tensors.items()}, module.alpha, extra=module.extra
    )
    rows, per_row = module.weight_delta_numel_shape()
    d = meta.weight_delta((rows, per_row), device=torch.device("meta"))
    if d.shape != (rows, per_row):
        raise RuntimeError("the product has an unexpected shape")


@torch.no_grad()
def dora_factor(weight: torch.Tensor, module: AdapterModule, flat: tuple[int, int], step: int) -> torch.Tensor:
    """k = dora_scale / (norm + eps) as ComfyUI's weight_decompose takes it, shaped to broadcast
    over the (out, in * kh * kw) view of the weight: (out, 1) or (1, in * kh * kw).

    ComfyUI's choice: if dora_scale has one entry per output row (shape[0] == out), the norm is
    that of each row of the ORIGINAL weight; otherwise it is, per input channel, the norm over
    (out, kh, kw) of the merged weight W + D. eps is fp32's (ComfyUI patches in fp32). The weight
    is read in row chunks of `step` rows (no full-size copy besides the one-layer delta)."""
    cdt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    rows, per_row = flat
    scale = module.dora_scale.to(device=weight.device, dtype=cdt).reshape(-1)
    on_rows = int(module.dora_scale.shape[0]) == rows
    view = weight.reshape(rows, per_row)
    if on_rows:
        norms = torch.cat([view[r0 : r0 + step].to(cdt).norm(dim=1) for r0 in range(0, rows, step)])
    else:
        channels = scale.numel()
        delta = module.weight_delta(flat, weight.device, cdt)
        squares = torch.zeros(channels, dtype=cdt, device=weight.device)
        for r0 in range(0, rows, step):
            merged = view[r0 : r0 + step].to(cdt) + delta[r0 : r0 + step]
            squares += merged.square().reshape(merged.shape[0], channels, -1).sum(dim=(0, 2))
        norms = squares.sqrt()
    k = scale / (norms + torch.finfo(torch.float32 if cdt == torch.float32 else cdt).eps)
    if on_rows:
        return k.reshape(rows, 1)
    return k.repeat_interleave(per_row // k.numel()).reshape(1, per_row)
