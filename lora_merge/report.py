"""What a LoRA load did: per adapter, which modules matched which weights, what was left out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AdapterReport:
    """One adapter (file) of a load."""

    name: str
    weight: float
    format: str
    family: str
    matched: dict[str, str] = field(default_factory=dict)  # LoRA module -> target parameter
    unmatched: list[str] = field(default_factory=list)  # UNet LoRA modules with no target
    text_encoder_modules: dict[str, int] = field(default_factory=dict)  # 'te1'/'te2' -> module count
    ignored_keys: list[str] = field(default_factory=list)  # file keys that are not LoRA tensors


@dataclass
class LoadReport:
    """Result of ``LoraPatcher.apply`` / ``reweight``."""

    target_family: str
    target_naming: str
    adapters: list[AdapterReport]
    targets: list[str]  # patched parameter names
    rank: int | None = None  # SVD rank, None for the exact concatenation
    max_relative_error: float = 0.0  # worst per-weight SVD error (0 for "cat")
    restore_state_bytes: int = 0  # sparse exact-restore state kept resident
    factor_bytes: int = 0  # low-rank factors kept resident (for re-weighting and restore)
    patched_weight_bytes: int = 0
    exceptions: int = 0  # elements stored sparsely for exact restore

    @property
    def unmatched(self) -> list[str]:
        return [f"{a.name}:{key}" for a in self.adapters for key in a.unmatched]

    def summary(self) -> str:
        lines = [
            f"target UNet: {self.target_family} ({self.target_naming} names); "
            f"{len(self.targets)} weights patched"
            + (f", SVD rank {self.rank} (max relative error {self.max_relative_error:.2e})" if self.rank else "")
        ]
        for a in self.adapters:
            te = ", ".join(f"{k}: {v}" for k, v in sorted(a.text_encoder_modules.items())) or "none"
            lines.append(
                f"  {a.name} x{a.weight:g} [{a.format}, {a.family}]: {len(a.matched)} matched, "
                f"{len(a.unmatched)} unmatched, text-encoder modules {te}"
                + (
                    f", {len(a.ignored_keys)} non-LoRA keys ignored (first: {a.ignored_keys[0]})"
                    if a.ignored_keys
                    else ""
                )
            )
        if self.patched_weight_bytes:
            lines.append(
                f"  restore state {self.restore_state_bytes} B "
                f"({100 * self.restore_state_bytes / self.patched_weight_bytes:.3f}% of patched weights), "
                f"factors {self.factor_bytes} B"
            )
        return "\n".join(lines)
