"""Differentiable rewards for reward-guided LCD (RG-LCD): a small registry.

A reward maps images (batch, 3, H, W) in [0, 1] and their prompts to one score per image,
differentiably: `reward(images, prompts)`. Built in (no downloads, prompts ignored):
`colorfulness` (Hasler & Suesstrunk 2003) and `saturation` (mean max-min channel spread).
Model-backed, from the user's files (`reward_models.py`): `hpsv2` and `imagereward`, which
score each image against its prompt (`prompt_conditioned = True`).
`LatentProxyReward` is RG-LCD's latent reward model: a small conv net on latents (and, for a
prompt-conditioned reward, the prompt's text embedding), trained online to regress the pixel
reward, used instead of decode + reward for the student's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

# reward(images, prompts) -> (batch,) scores; prompts may be None for rewards that ignore them
Reward = Callable[[torch.Tensor, "list[str] | None"], torch.Tensor]
RewardFactory = Callable[["str | None", "str | None"], Reward]
_REGISTRY: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable:
    """Decorator: register a factory `factory(model_file, tokenizer_dir) -> reward` under `name`."""

    def decorate(factory: RewardFactory) -> RewardFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def load_reward(name: str, model_file: str | None = None, tokenizer_dir: str | None = None) -> Reward:
    """The reward `name` (see `reward_names()`); `model_file` (and the folder of its tokenizer,
    by default the model file's own folder) for rewards backed by weights."""
    if name not in _REGISTRY:
        raise ValueError(f"--reward {name!r} is unknown; choose from {reward_names()}")
    return _REGISTRY[name](model_file, tokenizer_dir)


def is_prompt_conditioned(reward: Reward) -> bool:
    """Whether `reward` scores images against their prompts (and so needs them)."""
    return bool(getattr(reward, "prompt_conditioned", False))


def colorfulness(images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness per image: sqrt(var rg + var yb) + 0.3 sqrt(mean rg^2 + mean yb^2)."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + 1e-8).sqrt()
    mean = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + 1e-8).sqrt()
    return spread + 0.3 * mean


def saturation(images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
    """Mean over pixels of max(R, G, B) - min(R, G, B)."""
    return (images.amax(dim=1) - images.amin(dim=1)).flatten(1).mean(dim=1)


@register_reward("colorfulness")
def _colorfulness(model_file: str | None, tokenizer_dir: str | None) -> Reward:
    _no_file("colorfulness", model_file, tokenizer_dir)
    return colorfulness


@register_reward("saturation")
def _saturation(model_file: str | None, tokenizer_dir: str | None) -> Reward:
    _no_file("saturation", model_file, tokenizer_dir)
    return saturation


def _no_file(name: str, model_file: str | None, tokenizer_dir: str | None) -> None:
    if model_file is not None or tokenizer_dir is not None:
        raise ValueError(
            f"--reward {name} is built in and takes no --reward-model / --reward-tokenizer "
            f"(got {model_file or tokenizer_dir})"
        )


def _model_reward(name: str, tokenizer_files: tuple[str, ...]) -> RewardFactory:
    def factory(model_file: str | None, tokenizer_dir: str | None) -> Reward:
        from . import reward_models

        if model_file is None:
            raise ValueError(f"--reward {name} needs its weights: pass --reward-model FILE (nothing is downloaded)")
        if not Path(model_file).is_file():
            raise FileNotFoundError(f"--reward-model {model_file}: no such file (the {name} weights)")
        if tokenizer_dir is None:
            tokenizer_dir = str(Path(model_file).parent)
            if not all((Path(tokenizer_dir) / f).is_file() for f in tokenizer_files):
                raise ValueError(
                    f"--reward {name} needs its tokenizer ({' + '.join(tokenizer_files)}): pass "
                    f"--reward-tokenizer DIR, or put the files next to {model_file}"
                )
        return getattr(reward_models, f"load_{name}")(model_file, tokenizer_dir)

    return factory


register_reward("hpsv2")(_model_reward("hpsv2", ("vocab.json", "merges.txt")))
register_reward("imagereward")(_model_reward("imagereward", ("vocab.txt",)))


class LatentProxyReward(torch.nn.Module):
    """A small latent reward model (RG-LCD's LRM): latents (batch, C, h, w) -> one score each.
    With `text_dim`, the prompt's text embedding (batch, text_dim) scales the pooled latent
    features (FiLM, starting at identity), so a prompt-conditioned reward can be regressed."""

    def __init__(self, channels: int = 4, width: int = 32, text_dim: int | None = None):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(width, 1),
        )
        self.text = None
        if text_dim:
            self.text = torch.nn.Linear(text_dim, width)
            torch.nn.init.zeros_(self.text.weight)
            torch.nn.init.zeros_(self.text.bias)

    def forward(self, latents: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        if self.text is None:
            return self.net(latents).squeeze(1)
        if text is None:
            raise ValueError("this latent proxy is prompt-conditioned: pass the prompts' text embeddings")
        features = self.net[:-1](latents)
        return self.net[-1](features * (1 + self.text(text))).squeeze(1)
