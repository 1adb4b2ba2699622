"""The k-diffusion denoiser D(x, sigma) around a diffusers UNet, with classifier-free guidance.

For an eps model the UNet sees x / sqrt(sigma^2 + 1) at the nearest training timestep and
D = x - sigma * eps; v-prediction, x0 and LCM (consistency boundary condition, sigma_data 0.5,
timestep scaling 10) follow ComfyUI's model_sampling classes. Guidance mixes the denoised
predictions: D = D_uncond + cfg * (D_cond - D_uncond); cfg == 1 skips the negative pass.
An entry with a ControlNet (`control`, from ControlNetApplyAdvanced) adds the ControlNet's residuals
to each of its UNet calls (`controlnet.ControlRun`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch

from ...k_sampling import DiscreteSigmas, DistilledSigmas
from ...lcm_scheduler import consistency_output
from ...runtime.model_types import ModelHost
from .controlnet import ControlRun, unet_control_kwargs
from .deepcache import unet_call_context
from .names import SAMPLING_TYPES
from .refiner_conds import is_refiner_unet, refiner_added_conds

NO_UPPER_SIGMA = 999999999.9  # ComfyUI's sigma for percent 0: every sigma is below it
ACTIVE_WEIGHT_FLOOR = 1e-37  # ComfyUI starts each pass's weight sum here, so no active entry gives 0
SDXL_TIME_EMBED_KEYS = ("height", "width", "crop_h", "crop_w", "target_height", "target_width")


def sigma_table(model: ModelHost) -> DiscreteSigmas:
    """The sigma table the model samples with (distilled for LCM sampling)."""
    zsnr = bool(model.model_options.get("zsnr", False))
    cls = DistilledSigmas if model.sampling_type == "lcm" else DiscreteSigmas
    return cls(model.noise_schedule, zsnr=zsnr)


def denoised_from_output(kind: str, x: torch.Tensor, out: torch.Tensor, sigma: torch.Tensor, timestep: torch.Tensor):
    """x0 from the raw UNet output for sampling type `kind` (sigma, timestep shaped like x)."""
    if kind == "eps":
        return x - out * sigma
    if kind == "v_prediction":
        return x / (sigma**2 + 1.0) - out * sigma / (sigma**2 + 1.0) ** 0.5
    if kind == "x0":
        return out
    if kind == "lcm":  # ComfyUI's LCM model sampling: EPS, then the consistency boundary condition
        return consistency_output(x - out * sigma, x, timestep)
    raise ValueError(f"sampling type {kind!r} unknown; choose from {', '.join(SAMPLING_TYPES)}")


def sdxl_added_conds(entry: dict, batch: int, height: int, width: int, device, dtype) -> dict:
    """diffusers' `added_cond_kwargs` for SDXL: pooled text + size/crop ids (ComfyUI defaults)."""
    pooled = entry.get("pooled_output")
    if pooled is None:
        raise ValueError("SDXL conditioning has no 'pooled_output'; encode the prompt with an SDXL CLIP")
    values = {"height": height, "width": width, "crop_h": 0, "crop_w": 0}
    values.update({k: entry[k] for k in ("height", "width", "crop_h", "crop_w") if k in entry})
    values["target_height"] = entry.get("target_height", values["height"])
    values["target_width"] = entry.get("target_width", values["width"])
    time_ids = torch.tensor([[float(values[k]) for k in SDXL_TIME_EMBED_KEYS]], device=device, dtype=dtype)
    return {
        "text_embeds": pooled.to(device=device, dtype=dtype).expand(batch, -1),
        "time_ids": time_ids.expand(batch, -1),
    }


def percent_to_sigma(table: DiscreteSigmas, percent: float) -> float:
    """The sigma at a fraction of the schedule (0: above every sigma, 1: zero), as ComfyUI maps
    ConditioningSetTimestepRange's start / end: the table's sigma at timestep (1 - percent) * 999."""
    if percent <= 0.0:
        return NO_UPPER_SIGMA
    if percent >= 1.0:
        return 0.0
    return float(table.sigma(torch.tensor((1.0 - percent) * 999.0)))


def sigma_range(table: DiscreteSigmas, options: dict) -> tuple[float, float]:
    """(highest, lowest) sigma at which a conditioning entry takes part."""
    highest = percent_to_sigma(table, options["start_percent"]) if "start_percent" in options else math.inf
    lowest = percent_to_sigma(table, options["end_percent"]) if "end_percent" in options else -math.inf
    return highest, lowest


def entry_unet_inputs(
    unet: torch.nn.Module, cond: list, x: torch.Tensor, device, dtype, pass_name: str
) -> tuple[torch.Tensor, dict | None]:
    """(context repeated to `x`'s batch, diffusers' `added_cond_kwargs` or None) of one conditioning
    entry for `unet`; `pass_name` ("positive" / "negative") picks the refiner's default aesthetic score."""
    batch = x.shape[0]
    context = cond[0].to(device=device, dtype=dtype)
    if context.shape[0] != batch:
        context = context.repeat(math.ceil(batch / context.shape[0]), 1, 1)[:batch]
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        return context, None
    h, w = x.shape[2] * 8, x.shape[3] * 8
    if is_refiner_unet(unet):  # the refiner: pooled + size, crop and aesthetic score
        return context, refiner_added_conds(cond[1], batch, h, w, device, dtype, pass_name)
    return context, sdxl_added_conds(cond[1], batch, h, w, device, dtype)


class GuidedDenoiser:
    """D(x, sigma) with CFG for one sampling run; `seed` feeds the ancestral noise."""

    def __init__(self, model: ModelHost, positive: list, negative: list, cfg: float):
        self.model = model
        self.table = sigma_table(model)
        self.kind = model.sampling_type
        self.positive, self.negative, self.cfg = positive, negative, float(cfg)
        self.ranges: dict[str, list[tuple[float, float]]] = {}
        self.controls: dict[tuple[str, int], ControlRun] = {}
        runs: dict[int, ControlRun] = {}  # one run per control object: positive and negative share it
        for name, conds in (("positive", positive), ("negative", negative)):
            for index, cond in enumerate(conds):
                unsupported = sorted(set(cond[1]) & {"area", "mask", "gligen", "clip_start_percent"})
                if unsupported:
                    raise NotImplementedError(
                        f"{name} conditioning uses {unsupported}, which the standalone host does not support"
                    )
                control = cond[1].get("control")
                if control is not None:
                    if id(control) not in runs:
                        to_sigma = lambda percent: percent_to_sigma(self.table, percent)  # noqa: E731
                        runs[id(control)] = ControlRun(control, to_sigma, f"{name} conditioning", model.family)
                    self.controls[(name, index)] = runs[id(control)]
            self.ranges[name] = [sigma_range(self.table, cond[1]) for cond in conds]

    def _unet(
        self, x_in: torch.Tensor, timestep: torch.Tensor, cond: list, stream: Hashable, sigma: torch.Tensor
    ) -> torch.Tensor:
        unet = self.model.unet
        param = next(unet.parameters())
        context, added = entry_unet_inputs(unet, cond, x_in, param.device, param.dtype, stream[0])
        kwargs = {} if added is None else {"added_cond_kwargs": added}
        control = self.controls.get(stream)
        if control is not None:
            added = kwargs.get("added_cond_kwargs")
            residuals = control.residuals(x_in, timestep, context, float(sigma.flatten()[0]), added)
            kwargs.update(unet_control_kwargs(residuals))
        with unet_call_context(self.model, stream, sigma):
            out = unet(x_in.to(param.dtype), timestep.to(param.device).float(), encoder_hidden_states=context, **kwargs)
        return out.sample.float()

    @torch.no_grad()
    def denoise_one(self, x: torch.Tensor, sigma: torch.Tensor, conds: list, name: str) -> torch.Tensor:
        """Strength-weighted average of D over the conditioning entries active at `sigma` (ComfyUI's
        mixing: zero where none is); `name` ("positive" / "negative") picks the entries' sigma
        ranges and keeps each pass's DeepCache features apart."""
        if not conds:
            raise ValueError(f"the {name} conditioning is empty")
        shape = (-1,) + (1,) * (x.ndim - 1)
        s = sigma.reshape(shape).float()
        timestep = self.table.model_timestep(sigma.float())
        x_in = x / (s**2 + 1.0) ** 0.5
        total, weight = torch.zeros_like(x), 0.0
        ranges = self.ranges[name]
        now = float(sigma.flatten()[0])
        for index, cond in enumerate(conds):
            highest, lowest = ranges[index]
            if now > highest or now < lowest:
                continue  # outside the entry's ConditioningSetTimestepRange
            strength = float(cond[1].get("strength", 1.0))
            out = self._unet(x_in, timestep, cond, (name, index), sigma)
            total = total + denoised_from_output(self.kind, x, out, s, timestep.reshape(shape).float()) * strength
            weight += strength
        return total / (weight + ACTIVE_WEIGHT_FLOOR)  # nothing active at this sigma: 0, as in ComfyUI

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond = self.denoise_one(x, sigma, self.positive, "positive")
        if math.isclose(self.cfg, 1.0):
            return cond
        uncond = self.denoise_one(x, sigma, self.negative, "negative")
        return uncond + (cond - uncond) * self.cfg


class InpaintDenoiser:
    """Keep the unmasked region on the noised original latent (ComfyUI's KSamplerX0Inpaint)."""

    def __init__(self, inner, latent: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor):
        self.inner, self.latent, self.noise, self.mask = inner, latent, noise, mask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.mask
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        x = x * self.mask + (self.noise * s + self.latent) * keep
        out = self.inner(x, sigma)
        return out * self.mask + self.latent * keep
