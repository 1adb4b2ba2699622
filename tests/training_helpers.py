"""Shared pieces of the tests/test_training_*.py files: a micro UNet and toy batches."""

from __future__ import annotations

import torch


def micro_unet(seed: int = 0, cross_dim: int = 16):
    """A diffusers UNet2DConditionModel small enough for many training steps on CPU in seconds."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():  # no zero-initialised output layers: the teacher must do something
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return unet.eval()


class ToyBatches:
    """Fixed latents and conditioning, cycled; resumable (position saved)."""

    def __init__(self, count: int = 8, batch: int = 2, seed: int = 0, cross_dim: int = 16):
        g = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(count, 4, 8, 8, generator=g) * 0.5
        self.embeds = torch.randn(count, 3, cross_dim, generator=g)
        self.batch, self.position = batch, 0

    def next_batch(self) -> dict:
        idx = [(self.position + i) % len(self.latents) for i in range(self.batch)]
        self.position += self.batch
        emb = self.embeds[idx]
        return {
            "latents": self.latents[idx],
            "cond": {"encoder_hidden_states": emb},
            "uncond": {"encoder_hidden_states": torch.zeros_like(emb)},
        }

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def one_thread():
    """Generator for an autouse fixture: torch on one thread while a test runs (tiny models run
    several times faster that way on a shared 2-core machine), then back to what it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
