"""A generic training loop on Hugging Face `accelerate`: any task, any batch source.

    accelerator = make_accelerator(config)          # or let `train` make it
    result = train(task, batches, config, accelerator)

A task (`TrainTask`) owns the model and the objective; a batch source (`BatchSource`) yields
batches and can save its position. The loop owns: the AdamW optimizer over the task's trainable
parameters, device placement / mixed precision / gradient accumulation / multi-process through
`Accelerator`, one CPU `torch.Generator` that the task draws ALL its randomness from
(`StepContext.generator`: the same stream on every process; a task draws for the global batch and
keeps its rows, `StepContext.shard`, see `distributed.py`), a tqdm bar, a JSONL loss log + PNG
plot, and checkpoints in `work_dir/checkpoint/` of everything (trainable parameters, optimizer, task state such as an EMA,
RNG states, batch position, step). A checkpoint is written every `checkpoint_every` steps, at the
end, and on Ctrl-C: the first Ctrl-C finishes the current step, saves and returns
(`result.interrupted`); a KeyboardInterrupt raised inside a step (a second Ctrl-C) saves the state
as it was before that step. Calling `train` again with the same work_dir resumes exactly, with any
number of processes that keeps the global batch (the batch source checks it). With several processes
only the main one logs and writes checkpoints, after checking that all hold the same weights and
task state (`distributed.check_in_sync`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..processes import check_world, state_kwargs
from .distributed import SINGLE, Shard, check_in_sync, shard_of
from .plot import draw_loss_plot

CHECKPOINT_DIR = "checkpoint"
LOSS_LOG = "loss.jsonl"
LOSS_PLOT = "loss.png"
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class LoopConfig:
    """How to run the loop (the task decides what is trained and how the loss is computed)."""

    steps: int
    work_dir: str | Path
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    device: str | None = None  # "cpu", "cuda" or None (accelerate's choice, e.g. under `accelerate launch`)
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end and on interrupt
    gradient_checkpointing: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.grad_accum < 1:
            raise ValueError(f"gradient accumulation must be >= 1, got {self.grad_accum}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed-precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available to torch on this machine")


@dataclass
class StepContext:
    """What a task sees while computing one loss."""

    step: int  # the optimizer step being computed (0-based)
    micro_step: int  # index inside gradient accumulation
    generator: torch.Generator  # CPU; the task's only source of randomness (same stream on every process)
    accelerator: Any
    shard: Shard = SINGLE  # this process's rows of the global batch: draw for all, keep these


class TrainTask(Protocol):
    """The objective. `model` is prepared by the accelerator; `compute_loss` gets the prepared one."""

    model: torch.nn.Module

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]: ...

    def compute_loss(
        self, model: torch.nn.Module, batch: Any, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def after_step(self, ctx: StepContext) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    # Optional: `optimizer_groups(lr) -> [{"params": [...], "lr": ...}, ...]`, AdamW parameter groups
    # with their own learning rates (covering exactly trainable_parameters()); default: one group at lr.


class BatchSource(Protocol):
    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    steps_done: int
    interrupted: bool
    work_dir: Path
    log: list[dict] = field(default_factory=list)  # the whole run's log rows, resumed parts included


def make_accelerator(config: LoopConfig):
    """An `accelerate.Accelerator` for the config (mixed precision, accumulation, device)."""
    from accelerate import Accelerator

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        **state_kwargs(config.device),
    )
    check_world(accelerator)
    return accelerator


def _rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    accelerator,
    work_dir: Path,
    step: int,
    task: TrainTask,
    optimizer,
    batch_state: dict,
    rng_state: dict,
    config: LoopConfig,
) -> None:
    """Write work_dir/checkpoint atomically (a temporary folder renamed over the old one)."""
    final, tmp = work_dir / CHECKPOINT_DIR, work_dir / (CHECKPOINT_DIR + ".tmp")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    check_in_sync(accelerator, {"params": dict(task.trainable_parameters()), "task": task.state_dict()})
    accelerator.wait_for_everyone()
    torch.save(rng_state, tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = {
            "step": step,
            "params": {n: p.detach().cpu().clone() for n, p in task.trainable_parameters()},
            "optimizer": optimizer.state_dict(),
            "task": task.state_dict(),
            "batches": batch_state,
            "config": {k: str(v) for k, v in asdict(config).items()},
            "num_processes": accelerator.num_processes,
        }
        torch.save(state, tmp / "state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = work_dir / (CHECKPOINT_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(
    accelerator, work_dir: Path, task: TrainTask, optimizer, batches: BatchSource, generator: torch.Generator
) -> int:
    """Restore a checkpoint if work_dir has one; returns the step to continue from (0 if none)."""
    folder = work_dir / CHECKPOINT_DIR
    if not (folder / "state.pt").is_file():
        return 0
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    params = dict(task.trainable_parameters())
    if set(params) != set(state["params"]):
        raise RuntimeError(
            f"checkpoint {folder} holds other trainable parameters than this run (different --rank, targets or model?)"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    task.load_state_dict(state["task"])
    batches.load_state_dict(state["batches"])  # refuses a different global batch
    # Every process holds the same generator stream, so with another process count rank 0's state serves all.
    same_count = state["num_processes"] == accelerator.num_processes
    rng_file = folder / f"rng_{accelerator.process_index if same_count else 0}.pt"
    _set_rng_state(generator, torch.load(rng_file, weights_only=False))
    return int(state["step"])


def _read_log(path: Path, upto_step: int) -> list[dict]:
    """Log rows of steps < upto_step (rows of steps lost to an interrupt are dropped)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] < upto_step]


class _CtrlC:
    """First Ctrl-C: ask the loop to stop after the current step. Second: KeyboardInterrupt now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step, saving a checkpoint (Ctrl-C again to stop now)", flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(task: TrainTask, batches: BatchSource, config: LoopConfig, accelerator=None) -> TrainResult:
    """Run (or resume) the loop until `config.steps` optimizer steps are done or Ctrl-C."""
    accelerator = accelerator or make_accelerator(config)
    work_dir = Path(config.work_dir)
    if accelerator.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator("cpu").manual_seed(config.seed)  # one stream on all processes (module doc)
    if config.gradient_checkpointing:
        if not hasattr(task.model, "enable_gradient_checkpointing"):
            raise ValueError(
                f"--gradient-checkpointing: {type(task.model).__name__} has no enable_gradient_checkpointing()"
            )
        task.model.enable_gradient_checkpointing()
    task.model.train()
    groups = (
        task.optimizer_groups(config.lr)
        if hasattr(task, "optimizer_groups")  # own learning rates
        else [p for _, p in task.trainable_parameters()]
    )
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(task.model, optimizer)
    step = _load_checkpoint(accelerator, work_dir, task, optimizer, batches, generator)
    log = _read_log(work_dir / LOSS_LOG, step)
    if accelerator.is_main_process:
        (work_dir / LOSS_LOG).write_text("".join(json.dumps(r) + "\n" for r in log))
    bar = _progress(config, step, accelerator)
    interrupted = False
    with _CtrlC() as ctrl_c:
        while step < config.steps:
            snapshot = (batches.state_dict(), _rng_state(generator))
            try:
                row = _one_step(task, model, optimizer, batches, generator, accelerator, config, step)
            except KeyboardInterrupt:
                _save_checkpoint(accelerator, work_dir, step, task, optimizer, *snapshot, config)
                interrupted = True
                break
            step += 1
            log.append(row)
            if accelerator.is_main_process:
                with (work_dir / LOSS_LOG).open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
            if (
                ctrl_c.requested
                or step == config.steps
                or (config.checkpoint_every and step % config.checkpoint_every == 0)
            ):
                _save_checkpoint(
                    accelerator, work_dir, step, task, optimizer, batches.state_dict(), _rng_state(generator), config
                )
                _write_plot(accelerator, work_dir, log)
            if ctrl_c.requested:
                interrupted = True
                break
    if bar is not None:
        bar.close()
    _write_plot(accelerator, work_dir, log)
    return TrainResult(step, interrupted, work_dir, log)


def _one_step(task, model, optimizer, batches, generator, accelerator, config: LoopConfig, step: int) -> dict:
    """One optimizer step over `grad_accum` micro-batches; returns its log row."""
    total, metrics = 0.0, {}
    shard = shard_of(accelerator)
    for micro in range(config.grad_accum):
        ctx = StepContext(step, micro, generator, accelerator, shard)
        batch = batches.next_batch()
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, parts = task.compute_loss(model, batch, ctx)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_([p for _, p in task.trainable_parameters()], config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(accelerator.reduce(loss.detach().float(), "mean")) / config.grad_accum
        for k, v in _mean_over_processes(accelerator, parts).items():
            metrics[k] = metrics.get(k, 0.0) + v / config.grad_accum
    task.after_step(StepContext(step, config.grad_accum - 1, generator, accelerator, shard))
    return {"step": step, "loss": total, **metrics}


def _mean_over_processes(accelerator, parts: dict[str, float]) -> dict[str, float]:
    """The task's metrics averaged over all processes (each computed them on its own rows)."""
    if accelerator.num_processes == 1 or not parts:
        return {k: float(v) for k, v in parts.items()}
    keys = sorted(parts)
    values = torch.tensor([float(parts[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(values, "mean").tolist()))


def _progress(config: LoopConfig, start: int, accelerator):
    if not config.progress or not accelerator.is_local_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True)


def _write_plot(accelerator, work_dir: Path, log: list[dict]) -> None:
    if accelerator.is_main_process and log:
        draw_loss_plot(
            [r["step"] for r in log],
            [r["loss"] for r in log],
            work_dir / LOSS_PLOT,
            title=f"loss ({os.path.basename(str(work_dir))})",
        )
