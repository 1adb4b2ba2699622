"""A float64 LCM-LoRA training run for tests/test_distributed_training.py: the real loop, task and batch
source (LCD with a random guidance scale, EMA target, RG-LCD reward through a latent proxy, sharded
"posterior" noise in the prepare step) on a micro UNet in float64.

    accelerate launch --multi_gpu --num_processes 2 tests/distributed_train_job.py WORK OUT [--snapshot-at K]
    (or `run_job(...)` in-process for one process)

Trains to --steps (resuming WORK if it holds a checkpoint); with --snapshot-at K it first trains to K,
copies WORK to WORK.at<K> (a checkpoint to resume elsewhere), then continues to --steps. Every process
writes OUT.rank<N>.pt: LoRA parameters, EMA shadow, latent proxy state, and the loss log.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_helpers import micro_unet  # noqa: E402

from lcm_accel.lcm_scheduler.schedule import make_alphas_cumprod  # noqa: E402
from lcm_accel.training.data import ShuffledBatches  # noqa: E402
from lcm_accel.training.distill import DistillSettings, LCMDistillTask  # noqa: E402
from lcm_accel.training.distributed import SINGLE  # noqa: E402
from lcm_accel.training.lcd import LCDSettings  # noqa: E402
from lcm_accel.training.loop import LoopConfig, make_accelerator, train  # noqa: E402
from lcm_accel.training.rewards import colorfulness  # noqa: E402
from lcm_accel.training.student import add_lora  # noqa: E402

GLOBAL_BATCH = 4


class ToyData:
    """Eight fixed samples (float64 latents and text embeddings)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.latents = (torch.randn(8, 4, 8, 8, generator=g) * 0.5).double()
        self.embeds = torch.randn(8, 3, 16, generator=g).double()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "embeds": self.embeds[i]}


def prepare(batch: dict, ctx, teacher) -> dict:
    """Like SDBatchPreparer's posterior sample: noise drawn for the global batch, this process's rows."""
    shard = getattr(ctx, "shard", SINGLE)
    latents = batch["latents"]
    noise = shard.rows(
        lambda n: torch.randn((n, *latents.shape[1:]), generator=ctx.generator, dtype=torch.float64), latents.shape[0]
    )
    return {
        "latents": latents + 0.05 * noise,
        "cond": {"encoder_hidden_states": batch["embeds"]},
        "uncond": {"encoder_hidden_states": torch.zeros_like(batch["embeds"])},
    }


def _build(accelerator) -> tuple[LCMDistillTask, ShuffledBatches]:
    unet = micro_unet(0).double()
    torch.manual_seed(0)
    params = add_lora(unet, 4)
    settings = DistillSettings(lcd=LCDSettings(w_min=2.0, w_max=6.0), reward_scale=0.1, latent_proxy=True, ema_rate=0.9)
    task = LCMDistillTask(
        unet,
        params,
        make_alphas_cumprod().double(),
        settings,
        prepare,
        reward=colorfulness,
        decode=lambda z: torch.sigmoid(z[:, :3]),
    )
    batches = ShuffledBatches(
        ToyData(),
        GLOBAL_BATCH // accelerator.num_processes,
        seed=3,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    return task, batches


def run_job(work: Path, out: Path, steps: int, snapshot_at: int | None = None) -> None:
    """Train (see the module doc) and write OUT.rank<N>.pt."""
    config = LoopConfig(steps=steps, work_dir=work, lr=1e-3, device="cpu", progress=False, seed=5)
    accelerator = make_accelerator(config)
    if snapshot_at:
        task, batches = _build(accelerator)
        train(task, batches, LoopConfig(**{**config.__dict__, "steps": snapshot_at}), accelerator)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.copytree(work, work.with_name(f"{work.name}.at{snapshot_at}"))
        accelerator.wait_for_everyone()
    task, batches = _build(accelerator)  # a fresh process's view: everything comes from the checkpoint
    result = train(task, batches, config, accelerator)
    state = task.state_dict()
    torch.save(
        {
            "params": {n: p.detach().clone() for n, p in task.trainable_parameters()},
            "ema": state["ema"]["shadow"],
            "proxy": state["proxy"],
            "log": result.log,
            "num_processes": accelerator.num_processes,
        },
        out.with_name(f"{out.name}.rank{accelerator.process_index}.pt"),
    )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--snapshot-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_job(args.work, args.out, args.steps, args.snapshot_at)
