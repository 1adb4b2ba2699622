"""Several training processes under `accelerate launch` (or torchrun): what the loop and the tasks
need beyond what `Accelerator` already does (DDP wraps the model and all-reduces its gradients).

* Process-count-free randomness: every process holds the SAME generator stream (same seed) and
  draws each random tensor for the GLOBAL batch, keeping its own rows (`Shard.rows`). A sample's
  noise, timestep and guidance scale then depend on its place in the global batch only, so N
  processes with batch B compute what one process with batch N*B computes (up to float
  summation order), and a checkpoint resumes with any process count.
* Side models outside DDP (the latent proxy) average their gradients with `average_gradients`.
* `check_in_sync` proves, at every checkpoint, that the trainable parameters and the task's state
  (EMA target, proxy) are identical on all processes: a divergence is a bug, never saved.
* Joining the launched processes (`state_kwargs`, `check_world`) lives in `processes.py`, shared
  with the batch runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Shard:
    """This process's share of a global batch: rows [index*B, (index+1)*B) of num_processes*B."""

    index: int = 0
    count: int = 1

    def rows(self, draw: Callable[[int], torch.Tensor], local_rows: int) -> torch.Tensor:
        """`draw(global_rows)` (a random draw whose first dimension is the batch), this process's rows.
        Every process makes the same call, so the shared generator stays in step everywhere."""
        if self.count == 1:
            return draw(local_rows)
        drawn = draw(local_rows * self.count)
        return drawn[self.index * local_rows : (self.index + 1) * local_rows]


SINGLE = Shard()


def shard_of(accelerator: Any) -> Shard:
    """The `Shard` of an accelerate `Accelerator` / `PartialState` (one process: `SINGLE`)."""
    if accelerator is None:
        return SINGLE
    return Shard(int(accelerator.process_index), int(accelerator.num_processes))


@torch.no_grad()
def average_gradients(parameters: Iterable[torch.nn.Parameter], accelerator: Any) -> None:
    """All-reduce (mean) the gradients of a model that DDP does not wrap (e.g. the latent proxy)."""
    if accelerator is None or int(accelerator.num_processes) == 1:
        return
    for p in parameters:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, "mean"))


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dtype in (torch.int64, torch.int32, torch.bool):
            yield prefix, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{prefix}.{key}" if prefix else str(key))


@torch.no_grad()
def check_in_sync(accelerator: Any, named: dict[str, Any]) -> None:
    """Raise when any tensor in `named` (nested dicts of tensors) differs between processes.
    Each tensor is compared through its float64 sum and sum of squares, gathered from all processes."""
    if accelerator is None or int(accelerator.num_processes) == 1:
        return
    items = list(_tensors(named))
    if not items:
        return
    stats = torch.stack(
        [torch.stack([t.detach().double().sum(), t.detach().double().square().sum()]) for _, t in items]
    ).to(accelerator.device)
    gathered = accelerator.gather(stats.unsqueeze(0)).cpu()  # (processes, tensors, 2)
    differs = (gathered != gathered[:1]).any(dim=2).any(dim=0)
    if bool(differs.any()):
        names = [name for (name, _), bad in zip(items, differs.tolist()) if bad]
        raise RuntimeError(
            f"training processes diverged in {len(names)} tensor(s), e.g. {names[:3]}: the "
            "processes must run the same code on the same settings (a bug if they do)"
        )


def scale_report(batch: int, num_processes: int, grad_accum: int, lr: float, any_count: bool = True) -> str:
    """One line on the effective batch and learning rate of a run (`any_count`: the task's randomness is
    drawn per global batch, so the same global batch gives the same run on any number of processes)."""
    effective = batch * num_processes * grad_accum
    why = ": the same global batch gives the same run on any number of processes" if any_count else ""
    return (
        f"effective batch {effective} (--batch {batch} x {num_processes} process(es) x --grad-accum "
        f"{grad_accum}); learning rate {lr:g} (not rescaled with the process count{why})"
    )
