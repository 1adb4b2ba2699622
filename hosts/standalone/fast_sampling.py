"""LCM / TCD sampling for fast mode: replayed UNet steps, and a loop that never waits on the device.

The eager sampler (`lcm_scheduler.sample_lcm` / `sample_tcd`) looks timesteps up from device sigmas
and draws each step's noise on the CPU, so every step synchronises with the GPU. Here everything the
loop needs is computed before the first step:
- the plan: per step the UNet timestep and the coefficients of x_next = a * x0 + b * x + c * noise,
  `lcm_scheduler.plan_lcm_or_tcd`, the very plan the eager sampler runs;
- the per-step noise: the very numbers the eager path draws (the seed's CPU generator continued
  past the initial noise, one latent-sized draw per noised step), moved to the device in one copy;
- the UNet inputs: sigma and timestep rows, conditioning, SDXL ids, guidance embedding, on the device.
Each step is then a replayed UNet capture (`graph_cache`) plus a few element-wise kernels.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from ...lcm_scheduler import continuing_generator, draw_noise, plan_lcm_or_tcd
from ...runtime.fast_mode import FastModeSettings, fast_or_eager, module_dtype, say_once, settings_of, usable_backend
from ...runtime.graph_cache import graph_cache
from .controlnet import note_fast_mode
from .deepcache import RUN_OPTION, SETTINGS_OPTION
from .denoiser import entry_unet_inputs
from .lcm_denoiser import GuidanceEmbeddedUNet, PlainX0Denoiser, lcm_train_sigmas
from .sampling_job import SamplingJob

UNET_KWARGS_ADDED = ("text_embeds", "time_ids")  # go to the UNet as `added_cond_kwargs`


class _PlannedTimesteps:
    """The sigma -> timestep lookup of the denoiser, answered from the plan (no device lookup):
    the loop sets `index` before each step."""

    def __init__(self, rows: torch.Tensor):
        self.rows, self.index = rows, 0

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.rows[self.index]


def _unet_forward(unet: torch.nn.Module, names: tuple[str, ...], sample, timestep, context, *extras):
    """The captured UNet step: (noise prediction,) from static inputs; `names` label the extras."""
    kwargs = dict(zip(names, extras))
    added = {name: kwargs.pop(name) for name in UNET_KWARGS_ADDED if name in kwargs}
    if added:
        kwargs["added_cond_kwargs"] = added
    return (unet(sample, timestep, encoder_hidden_states=context, **kwargs).sample,)


class PlannedX0Denoiser(PlainX0Denoiser):
    """PlainX0Denoiser (CFG, conditioning mix, eps / v / x0) whose UNet calls replay captures and whose
    inputs were put on the device before the loop: timesteps from the plan, conditioning, SDXL ids
    and the guidance embedding of full LCM UNets prepared once per conditioning entry."""

    def __init__(
        self,
        model,
        positive: list,
        negative: list,
        cfg: float,
        x: torch.Tensor,
        timesteps: list[int],
        settings: FastModeSettings,
    ):
        super().__init__(model, positive, negative, cfg)
        unet = self.model.unet
        extras = {}
        if isinstance(unet, GuidanceEmbeddedUNet):
            unet, embedding = unet.unet, unet.embedding
            extras["timestep_cond"] = embedding.to(x.device, module_dtype(unet)).expand(x.shape[0], -1).contiguous()
        self.unet, self.settings = unet, settings
        self.dtype = module_dtype(unet)
        rows = torch.tensor(timesteps, dtype=torch.long)[:, None].expand(-1, x.shape[0]).contiguous()
        self.table = _PlannedTimesteps(rows.to(x.device))
        passes = [("positive", positive)] + ([] if math.isclose(self.cfg, 1.0) else [("negative", negative)])
        self.inputs = {
            (name, index): self._prepare(cond, x, extras, name)
            for name, conds in passes
            for index, cond in enumerate(conds)
        }
        graph_cache(unet, usable_backend(settings, unet)).check_storage(unet)

    def _prepare(self, cond: list, x: torch.Tensor, extras: dict, pass_name: str) -> tuple[torch.Tensor, dict]:
        """(context, extra UNet inputs) of one conditioning entry of the `pass_name` ("positive" /
        "negative") pass, on the device, as `_unet` builds them."""
        context, added = entry_unet_inputs(self.unet, cond, x, x.device, self.dtype, pass_name)
        inputs = dict(extras)
        inputs.update({name: tensor.contiguous() for name, tensor in (added or {}).items()})
        return context.contiguous(), inputs

    def _unet(self, x_in, timestep, cond, stream, sigma) -> torch.Tensor:
        context, extras = self.inputs[stream]
        names = tuple(extras)
        inputs = (x_in.to(self.dtype), timestep.float(), context, *extras.values())
        (out,) = fast_or_eager(
            self.settings,
            "unet",
            self.unet,
            partial(_unet_forward, self.unet, names),
            inputs,
            extra=names,
            check_storage=False,
        )
        return out.float()


def step_noises(x: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    """(count, *x.shape) noise on x's device: the draws the eager LCM / TCD sampler makes, in order."""
    generator = continuing_generator(x, seed)
    like = torch.empty(x.shape, dtype=x.dtype)
    if count == 0:
        return like.new_empty((0, *x.shape)).to(x.device)
    return torch.stack([draw_noise(like, generator) for _ in range(count)]).to(x.device)


def fast_sampling_settings(model) -> FastModeSettings | None:
    """The settings when this MODEL's LCM / TCD run can take the fast path, else None (said once why)."""
    settings = settings_of(model)
    if settings is None:
        return None
    if SETTINGS_OPTION in model.model_options or RUN_OPTION in model.model_options:
        say_once(
            "fast mode: DeepCache is on for this MODEL; its per-step switch between full and cached UNet "
            "passes is not captured, so sampling runs eager (DeepCache still applies)"
        )
        return None
    if usable_backend(settings, model.unet) is None:
        return None
    return settings


@torch.no_grad()
def fast_lcm_sample(job: SamplingJob, gamma: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """LCMSampler's (final latent, last denoised) on the fast path, or None when fast mode is off or
    cannot run here (the eager sampler then runs; the reason was said once)."""
    settings = fast_sampling_settings(job.model)
    if settings is None or note_fast_mode(job.positive, job.negative):
        return None
    train_sigmas = lcm_train_sigmas(job.model)
    sigmas = job.sigmas.detach().float().cpu()
    plan = plan_lcm_or_tcd(sigmas, train_sigmas, gamma)
    x = job.x
    inner = PlannedX0Denoiser(job.model, job.positive, job.negative, job.cfg, x, [s.timestep for s in plan], settings)
    denoiser = job.wrap(inner)
    noises = step_noises(x, job.seed, sum(1 for step in plan if step.noise_coef))
    sigma_rows = sigmas[:-1, None].expand(-1, x.shape[0]).contiguous().to(x.device)
    drawn, preview = 0, x
    for i, step in enumerate(plan):
        inner.table.index = i
        x0 = denoiser(x, sigma_rows[i])
        x_next = x0 * step.x0_coef + x * step.x_coef
        preview = x0 if step.preview_is_x0 else x_next
        job.step(i)
        if step.noise_coef:
            x_next = x_next + noises[drawn] * step.noise_coef
            drawn += 1
        x = x_next
    return x, preview


def note_eager_sampler(model, sampler_name: str) -> None:
    """Say once that fast mode does not cover this sampler (it runs eager)."""
    if settings_of(model) is not None:
        say_once(
            f"fast mode covers LCM / TCD sampling (LCM Sampler, LCM KSampler, Accelerator nodes); sampler {sampler_name!r} runs eager"
        )
