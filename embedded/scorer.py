"""A small CNN that reads the world's labels back from a picture: shape, colour, position, style.

It turns "does the image follow the prompt?" into a number (`prompt_accuracy`). Trained on
renders of the world, plain and outlined, half of them passed through the embedded VAE (so the
softness of decoded images is familiar) plus blur and noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .world import COLOURS, POSITIONS, SHAPES, STYLES, Scene

HEADS = {"shape": SHAPES, "colour": tuple(COLOURS), "position": tuple(POSITIONS), "style": STYLES}


class Scorer(nn.Module):
    """(N, 3, 64, 64) images in [0, 1] -> logits per head (`HEADS`)."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 2 * width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(channels * 16, len(labels)) for name, labels in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images * 2 - 1)
        return {name: head(features) for name, head in self.heads.items()}


@dataclass
class Verdict:
    """What the scorer sees in one image."""

    shape: str
    colour: str
    position: str
    style: str

    def matches(self, scene: Scene) -> bool:
        """Shape and colour as the prompt asks (the prompt-accuracy criterion)."""
        return self.shape == scene.shape and self.colour == scene.colour


@torch.no_grad()
def verdicts(scorer: Scorer, images: torch.Tensor) -> list[Verdict]:
    """The scorer's reading of each image ((N, 3, 64, 64) in [0, 1])."""
    logits = scorer(images.float().clamp(0, 1))
    picks = {name: logits[name].argmax(dim=1).tolist() for name in HEADS}
    return [Verdict(*(HEADS[name][picks[name][i]] for name in HEADS)) for i in range(images.shape[0])]


def load_scorer(path: str | Path) -> Scorer:
    """The scorer from its safetensors file (refuses a file with other tensors)."""
    from safetensors.torch import load_file

    scorer = Scorer()
    scorer.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return scorer.eval().requires_grad_(False)


def save_scorer(scorer: Scorer, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.detach().half().contiguous() for k, v in scorer.state_dict().items()}, str(path))
    return path


def _degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur and noise: what a generated picture may look like."""
    n = images.shape[0]
    blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.rand(n, 1, 1, 1, generator=generator)
    out = images * (1 - amount) + blur * amount
    out = out + torch.randn(images.shape, generator=generator) * 0.03 * torch.rand(n, 1, 1, 1, generator=generator)
    return out.clamp(0, 1)


def train_scorer(
    scenes: list[Scene],
    plain: torch.Tensor,
    outlined: torch.Tensor,
    plain_decoded: torch.Tensor | None = None,
    outlined_decoded: torch.Tensor | None = None,
    steps: int = 800,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Scorer:
    """Train a scorer on renders of `scenes` (`plain` and `outlined`: (N, 3, 64, 64) in [0, 1]);
    `*_decoded`: the same renders after the VAE round trip, drawn for half of each batch."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    scorer = Scorer()
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    labels = {
        name: torch.tensor([HEADS[name].index(getattr(s, name)) for s in scenes]) for name in HEADS if name != "style"
    }
    for _ in tqdm(range(steps), desc="scorer", disable=not progress):
        index = torch.randint(len(scenes), (batch,), generator=generator)
        style = torch.randint(2, (batch,), generator=generator)
        outlined_pick = style.view(-1, 1, 1, 1).bool()
        images = torch.where(outlined_pick, outlined[index], plain[index])
        if plain_decoded is not None and outlined_decoded is not None:
            decoded = torch.where(outlined_pick, outlined_decoded[index], plain_decoded[index])
            use = (torch.rand(batch, generator=generator) < 0.5).view(-1, 1, 1, 1)
            images = torch.where(use, decoded, images)
        images = _degrade(images, generator)
        logits = scorer(images)
        targets = {**{name: value[index] for name, value in labels.items()}, "style": style}
        loss = sum(nn.functional.cross_entropy(logits[name], targets[name]) for name in HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return scorer.eval().requires_grad_(False)
