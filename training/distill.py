"""The LCM-LoRA distillation task for `loop.train`: LCD, guidance distillation, or both, with an
optional reward term (RG-LCD), on a diffusers UNet carrying a peft LoRA (`student.add_lora`).

    loss = L_LCD                                        mode "lcd"
         = L_guid                                       mode "guidance" (fixed w)
         = L_LCD + guidance_weight * L_guid             mode "lcd+guidance" (fixed w)
    loss -= reward_scale * mean R(decode(f_student(x_t, t)), prompts)     (RG-LCD; lcd modes only)
With `latent_proxy`, R(decode(.)) in the student's loss is replaced by a small latent reward
model regressed online (its own Adam) onto R(decode(x0)) of the detached one-step samples; for
a prompt-conditioned reward (HPSv2, ImageReward) the proxy also sees the prompt's text embedding.
The prompts come from the prepared batch ("prompts"; `SDBatchPreparer` passes them on).
Full-model distillation (benchmarks/bench_train_memory.py): all of the UNet's parameters as the
trainable ones and an explicit `teacher` (a separate frozen copy) instead of the LoRA switched off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .distributed import SINGLE, average_gradients
from .guidance import ModelFn, guidance_distillation_loss
from .lcd import LCDSettings, ddim_solver_grid, draw_lcd_inputs, lcd_loss
from .rewards import LatentProxyReward, Reward, is_prompt_conditioned
from .student import LoraEMA, adapters_disabled

MODES = ("lcd", "guidance", "lcd+guidance")
# prepare(batch, ctx, teacher) -> {"latents": scaled latents, "cond": UNet kwargs, "uncond": UNet kwargs}
Prepare = Callable[[Any, Any, ModelFn], dict]


@dataclass(frozen=True)
class DistillSettings:
    mode: str = "lcd"
    lcd: LCDSettings = field(default_factory=LCDSettings)
    guidance_weight: float = 1.0
    reward_scale: float = 0.0
    latent_proxy: bool = False
    proxy_lr: float = 1e-3
    ema_rate: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "lcd" and self.lcd.w is None:
            raise ValueError(
                f"--mode {self.mode} distils one guidance scale into the LoRA (it has no w input): "
                "give a fixed --w instead of --w-min/--w-max"
            )
        if self.reward_scale and self.mode == "guidance":
            raise ValueError("--reward needs an LCD mode (lcd or lcd+guidance): it scores the one-step LCM sample")


def unet_fn(unet: torch.nn.Module) -> ModelFn:
    """A diffusers UNet as `model(x, t, cond_kwargs) -> output tensor`."""
    return lambda x, t, cond: unet(x, t, **cond, return_dict=False)[0]


def teacher_fn(unet: torch.nn.Module) -> ModelFn:
    """The frozen base: the same UNet with its LoRA switched off, without gradients."""

    def run(x, t, cond):
        with torch.no_grad(), adapters_disabled(unet):
            return unet(x, t, **cond, return_dict=False)[0]

    return run


def identity_prepare(batch: dict, ctx: Any, teacher: ModelFn) -> dict:
    """For batches that already hold latents / cond / uncond (toy models, precomputed data)."""
    return batch


class LCMDistillTask:
    """`loop.TrainTask` for LCM-LoRA distillation (see the module docstring). `lora_params` are the
    trainable parameters (and what an EMA target averages); `teacher`, when given, is the frozen
    teacher (e.g. `unet_fn(frozen_copy)`; the objectives call it under no_grad), else the UNet with
    its LoRA switched off (`teacher_fn`)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        lora_params: list[tuple[str, torch.nn.Parameter]],
        alphas_cumprod: torch.Tensor,
        settings: DistillSettings,
        prepare: Prepare = identity_prepare,
        reward: Reward | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        latent_channels: int = 4,
        teacher: ModelFn | None = None,
    ):
        if settings.reward_scale and reward is None:
            raise ValueError("reward_scale is set but no reward was given")
        self.model = unet
        self.params = lora_params
        self.teacher = teacher
        self.acp = alphas_cumprod
        self.settings = settings
        self.prepare = prepare
        self.reward = reward
        self.decode = decode or (lambda z: (z + 1) / 2)
        self.grid = ddim_solver_grid(len(alphas_cumprod), settings.lcd.num_ddim_steps)
        self.ema = LoraEMA(lora_params, settings.ema_rate) if settings.ema_rate else None
        self.proxy = self.proxy_optimizer = None
        if settings.reward_scale and settings.latent_proxy:
            device = lora_params[0][1].device
            text_dim = (
                getattr(getattr(unet, "config", None), "cross_attention_dim", None)
                if is_prompt_conditioned(reward)
                else None
            )
            if is_prompt_conditioned(reward) and not isinstance(text_dim, int):
                raise ValueError(
                    "--latent-proxy with a prompt-conditioned reward needs a UNet with one "
                    f"cross_attention_dim, got {text_dim!r}"
                )
            self.proxy = LatentProxyReward(latent_channels, text_dim=text_dim).to(device)
            self.proxy_optimizer = torch.optim.Adam(self.proxy.parameters(), lr=settings.proxy_lr)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return self.params

    def _target(self, model: torch.nn.Module) -> ModelFn:
        student = unet_fn(self.model)
        if self.ema is None:
            return student

        def run(x, t, cond):
            with self.ema.swapped_in():
                return student(x, t, cond)

        return run

    def compute_loss(self, model: torch.nn.Module, batch: Any, ctx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = self.teacher if self.teacher is not None else teacher_fn(self.model)
        data = self.prepare(batch, ctx, teacher)
        latents, cond, uncond = data["latents"], data["cond"], data["uncond"]
        acp = self.acp.to(latents.device)
        s, metrics, loss = self.settings, {}, latents.new_zeros((), dtype=torch.float32)
        if s.mode in ("lcd", "lcd+guidance"):
            draw = draw_lcd_inputs(latents, self.grid, s.lcd, ctx.generator, getattr(ctx, "shard", SINGLE))
            out = lcd_loss(
                unet_fn(model), teacher, self._target(model), latents, cond, uncond, acp, self.grid, draw, s.lcd
            )
            loss = loss + out.loss
            metrics["lcd"] = float(out.loss.detach())
            if s.reward_scale:
                reward = self._reward_term(out.student_denoised, data, metrics, getattr(ctx, "accelerator", None))
                loss = loss - s.reward_scale * reward
        if s.mode in ("guidance", "lcd+guidance"):
            shard, n, rest = getattr(ctx, "shard", SINGLE), latents.shape[0], tuple(latents.shape[1:])
            t = shard.rows(lambda k: torch.randint(0, len(acp), (k,), generator=ctx.generator), n).to(latents.device)
            noise = shard.rows(lambda k: torch.randn((k, *rest), generator=ctx.generator), n).to(
                latents.device, latents.dtype
            )
            g_loss, _ = guidance_distillation_loss(
                unet_fn(model), teacher, latents, noise, t, cond, uncond, s.lcd.w, acp
            )
            loss = loss + (s.guidance_weight if s.mode == "lcd+guidance" else 1.0) * g_loss
            metrics["guidance"] = float(g_loss.detach())
        return loss, metrics

    def _reward_term(self, x0: torch.Tensor, data: dict, metrics: dict, accelerator: Any = None) -> torch.Tensor:
        """Mean reward of the one-step samples, through the decoder or the latent proxy. The proxy
        is not in DDP: its gradients are averaged over the processes here, so it stays in sync."""
        prompts = data.get("prompts")
        if is_prompt_conditioned(self.reward) and prompts is None:
            raise ValueError(
                "this reward scores each image against its prompt, but the batches carry no "
                "'prompts' (a prepare function must pass them on)"
            )
        if self.proxy is None:
            reward = self.reward(self.decode(x0.float()), prompts).mean()
            metrics["reward"] = float(reward.detach())
            return reward
        text = (
            data["cond"]["encoder_hidden_states"].detach().float().mean(dim=1) if self.proxy.text is not None else None
        )
        with torch.no_grad():
            true_reward = self.reward(self.decode(x0.detach().float()), prompts)
        with torch.enable_grad():
            self.proxy.requires_grad_(True)
            self.proxy_optimizer.zero_grad(set_to_none=True)
            proxy_loss = torch.mean((self.proxy(x0.detach().float(), text) - true_reward) ** 2)
            proxy_loss.backward()
            average_gradients(self.proxy.parameters(), accelerator)
            self.proxy_optimizer.step()
        self.proxy.requires_grad_(False)
        metrics["reward"] = float(true_reward.mean())
        metrics["proxy_mse"] = float(proxy_loss.detach())
        return self.proxy(x0.float(), text).mean()

    def after_step(self, ctx: Any) -> None:
        if self.ema is not None:
            self.ema.update()

    def state_dict(self) -> dict:
        state: dict = {}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.proxy is not None:
            state["proxy"] = {k: v.cpu() for k, v in self.proxy.state_dict().items()}
            state["proxy_optimizer"] = self.proxy_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.proxy is not None:
            self.proxy.load_state_dict(state["proxy"])
            self.proxy_optimizer.load_state_dict(state["proxy_optimizer"])
