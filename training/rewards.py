"""Differentiable rewards for reward-guided LCD (RG-LCD): a small registry.

A reward maps images (batch, 3, H, W) in [0, 1] to one score per image, differentiably.
Built in (no downloads): `colorfulness` (Hasler & Suesstrunk 2003) and `saturation` (mean
max-min channel spread). `hpsv2` and `imagereward` need the user's weight file; this version
checks the file and then refuses: their model classes (open_clip ViT-H / BLIP) are not shipped.
`LatentProxyReward` is RG-LCD's latent reward model: a small conv net on latents, trained
online to regress the pixel reward, used instead of decode + reward for the student's gradient.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

Reward = Callable[[torch.Tensor], torch.Tensor]
_REGISTRY: dict[str, Callable[[str | None], Reward]] = {}


def register_reward(name: str) -> Callable:
    """Decorator: register a factory `factory(model_file) -> reward` under `name`."""
    def decorate(factory: Callable[[str | None], Reward]) -> Callable[[str | None], Reward]:
        _REGISTRY[name] = factory
        return factory
    return decorate


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def load_reward(name: str, model_file: str | None = None) -> Reward:
    """The reward `name` (see `reward_names()`); `model_file` for rewards backed by weights."""
    if name not in _REGISTRY:
        raise ValueError(f"--reward {name!r} is unknown; choose from {reward_names()}")
    return _REGISTRY[name](model_file)


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness per image: sqrt(var rg + var yb) + 0.3 sqrt(mean rg^2 + mean yb^2)."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + 1e-8).sqrt()
    mean = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + 1e-8).sqrt()
    return spread + 0.3 * mean


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of max(R, G, B) - min(R, G, B)."""
    return (images.amax(dim=1) - images.amin(dim=1)).flatten(1).mean(dim=1)


@register_reward("colorfulness")
def _colorfulness(model_file: str | None) -> Reward:
    _no_file("colorfulness", model_file)
    return colorfulness


@register_reward("saturation")
def _saturation(model_file: str | None) -> Reward:
    _no_file("saturation", model_file)
    return saturation


def _no_file(name: str, model_file: str | None) -> None:
    if model_file is not None:
        raise ValueError(f"--reward {name} is built in and takes no --reward-model file (got {model_file})")


def _weights_reward(name: str, package: str) -> Callable[[str | None], Reward]:
    def factory(model_file: str | None) -> Reward:
        if model_file is None:
            raise ValueError(f"--reward {name} needs its weights: pass --reward-model FILE (nothing is downloaded)")
        if not Path(model_file).is_file():
            raise FileNotFoundError(f"--reward-model {model_file}: no such file (the {name} weights)")
        raise NotImplementedError(
            f"--reward {name}: the weights file exists, but this version does not ship the {name} model class "
            f"(the '{package}' package's network); use a built-in reward ({', '.join(('colorfulness', 'saturation'))})"
        )
    return factory


register_reward("hpsv2")(_weights_reward("hpsv2", "hpsv2"))
register_reward("imagereward")(_weights_reward("imagereward", "image-reward"))


class LatentProxyReward(torch.nn.Module):
    """A small latent reward model (RG-LCD's LRM): latents (batch, C, h, w) -> one score each."""

    def __init__(self, channels: int = 4, width: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents).squeeze(1)
