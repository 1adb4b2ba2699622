"""ControlNets on the standalone host's sampler: what ControlNetApplyAdvanced / ControlNetApply attach
to a conditioning entry, and what the denoiser runs at each UNet call (ComfyUI's `ControlNet.get_control`).

A conditioning entry's options carry `control`: an `AppliedControl` (ControlNet, hint image, strength,
start / end percent) whose `previous` is the control the entry had before (controls chain). At each
UNet call the denoiser asks the chain for residuals: every control active at the call's sigma runs
its ControlNet on the UNet's own input (x / sqrt(sigma^2 + 1), timestep, text context, SDXL ids) and
the hint resized to the latent's pixel size (`common_upscale`, nearest-exact, centre crop); its
residuals are scaled by its strength and summed with the previous controls' residuals, then added
to the UNet's skip connections and middle block (diffusers' `down_block_additional_residuals` /
`mid_block_additional_residual`, where ComfyUI adds its `output` / `middle` controls).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ...runtime.controlnet_files import LoadedControlNet
from ...runtime.fast_mode import say_once
from ...runtime.model_types import ModelHost
from .resample import common_upscale

HINT_UPSCALE = "nearest-exact"  # ComfyUI's ControlNet `upscale_algorithm`
HINT_CROP = "center"
LATENT_TO_PIXELS = 8  # ComfyUI's `compression_ratio` of SD1.5 / SDXL ControlNets
DEEPCACHE_REFUSED = (
    "DeepCache with a ControlNet is not supported headless: this run samples without DeepCache "
    "(its cached steps would skip the blocks the ControlNet adds to)"
)
FAST_MODE_REFUSED = "fast mode: a ControlNet is applied to the conditioning; this run samples eager"

Residuals = tuple[list[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AppliedControl:
    """One ControlNetApplyAdvanced on an entry: `hint` is (B, C, H, W) in 0..1; `previous` the
    control the entry had before (its residuals are added to these)."""

    net: LoadedControlNet
    hint: torch.Tensor
    strength: float
    start_percent: float
    end_percent: float
    previous: AppliedControl | None = None

    def chain(self) -> Iterator[AppliedControl]:
        """This control and the ones before it, oldest first."""
        if isinstance(self.previous, AppliedControl):
            yield from self.previous.chain()
        elif self.previous is not None:
            raise TypeError(
                "ControlNetApplyAdvanced: a previous 'control' is not a ControlNet from ControlNetApplyAdvanced"
            )
        yield self


def has_control(*conditionings: list) -> bool:
    """Whether any entry of these conditionings carries a ControlNet."""
    return any(entry[1].get("control") is not None for conds in conditionings for entry in conds)


def with_uncond_controls(positive: list, negative: list) -> list:
    """The negative conditioning a sampling run uses, given ControlNetApply's positive entries
    (`control_apply_to_uncond`): as ComfyUI's `process_conds`, a negative without any ControlNet gets
    them, the k-th such control on negative entry k modulo the number of entries (a later control
    replaces an earlier one on the same entry); a negative that has a ControlNet is kept as it is."""
    shared = [e[1]["control"] for e in positive if e[1].get("control_apply_to_uncond") and e[1].get("control")]
    if not shared or not negative or has_control(negative):
        return negative
    out = list(negative)
    for k, control in enumerate(shared):
        index = k % len(negative)
        out[index] = [negative[index][0], {**negative[index][1], "control": control}]
    return out


def without_deepcache(model: ModelHost, positive: list, negative: list) -> ModelHost:
    """The MODEL to sample with: DeepCache is left out (said once) when a ControlNet is applied."""
    from .deepcache import SETTINGS_OPTION

    if SETTINGS_OPTION not in model.model_options or not has_control(positive, negative):
        return model
    say_once(DEEPCACHE_REFUSED)
    model = model.clone()
    del model.model_options[SETTINGS_OPTION]
    return model


def broadcast_hint(hint: torch.Tensor, batch: int) -> torch.Tensor:
    """The hint for a latent batch: one picture for all, else the first `batch` pictures repeated
    cyclically (ComfyUI's `broadcast_image_to` for one conditioning)."""
    if hint.shape[0] == 1:
        return hint.expand(batch, -1, -1, -1)
    hint = hint[:batch]
    if hint.shape[0] < batch:
        hint = hint.repeat(math.ceil(batch / hint.shape[0]), 1, 1, 1)[:batch]
    return hint


class ControlRun:
    """An entry's control chain during one sampling run: each control's sigma range (from the run's
    schedule, as ComfyUI's `pre_run`), its hint prepared once per latent size."""

    def __init__(self, control: AppliedControl, percent_to_sigma: Callable[[float], float], where: str, family: str):
        self.links = []
        if not isinstance(control, AppliedControl):
            raise TypeError(f"{where}: 'control' is not a ControlNet from ControlNetApplyAdvanced")
        for link in control.chain():
            if link.net.family != family:
                raise ValueError(
                    f"ControlNetApplyAdvanced: the ControlNet {link.net.name!r} is for {link.net.family}, "
                    f"but the {where} is sampled with a {family} MODEL"
                )
            highest, lowest = percent_to_sigma(link.start_percent), percent_to_sigma(link.end_percent)
            self.links.append((link, highest, lowest))
        self.hints: dict[tuple, torch.Tensor] = {}

    def _hint(self, index: int, link: AppliedControl, x_in: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        height, width = x_in.shape[2] * LATENT_TO_PIXELS, x_in.shape[3] * LATENT_TO_PIXELS
        key = (index, height, width, x_in.shape[0])
        if key not in self.hints:
            hint = common_upscale(link.hint.float(), width, height, HINT_UPSCALE, HINT_CROP)
            hint = broadcast_hint(hint, x_in.shape[0])
            self.hints[key] = hint.to(device=param.device, dtype=param.dtype)
        return self.hints[key]

    @torch.no_grad()
    def residuals(
        self, x_in: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, sigma: float, added: dict | None
    ) -> Residuals | None:
        """The summed, strength-scaled residuals of the controls active at `sigma` (None: none is)."""
        total: Residuals | None = None
        for index, (link, highest, lowest) in enumerate(self.links):
            if sigma > highest or sigma < lowest:
                continue  # outside this control's start / end percent
            net = link.net.model
            param = next(net.parameters())
            kwargs = {} if added is None else {"added_cond_kwargs": added}
            down, mid = net(
                x_in.to(param.dtype),
                timestep.to(param.device).float(),
                encoder_hidden_states=context.to(param.dtype),
                controlnet_cond=self._hint(index, link, x_in, param),
                conditioning_scale=float(link.strength),
                return_dict=False,
                **kwargs,
            )
            if total is None:
                total = (list(down), mid)
            else:
                total = ([a + b for a, b in zip(total[0], down, strict=True)], total[1] + mid)
        return total


def unet_control_kwargs(residuals: Residuals | None) -> dict:
    """The UNet call's keyword arguments that add the residuals (none without)."""
    if residuals is None:
        return {}
    down, mid = residuals
    return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


def note_fast_mode(positive: list, negative: list) -> bool:
    """True (and said once) when this run's conditioning has a ControlNet, which fast mode does not capture."""
    if not has_control(positive, negative):
        return False
    say_once(FAST_MODE_REFUSED)
    return True
