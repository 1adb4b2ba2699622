"""Training on several processes (accelerate launch, 2 CPU processes, gloo) against one process.

Why two precisions. Every process draws the randomness of the GLOBAL batch from one shared stream and
keeps its rows (training/distributed.py), so 2 processes x batch 2 see exactly the samples, noise,
timesteps and guidance scales of 1 process x batch 4; what differs is float summation order (the UNet
on 2 rows instead of 4, the gradient all-reduce). In float32 that is ~1e-6 relative, and AdamW turns it
into O(lr) weight differences wherever a gradient element is at rounding level (GroupNorm cancels
time-embedding LoRAs exactly, for instance): Adam's step is about lr whatever the gradient's size, so
the sign of rounding noise decides it. One process against itself with another thread count differs as
much. So:
* float64 (the loop, the LCD task with EMA target, reward through the latent proxy, sharded prepare-step
  noise, on a micro UNet): LoRA and EMA equal to atol 1e-7 (~1e-4 of one step of lr 1e-3; measured
  ~3e-9), the float32 latent proxy to atol 1e-6 (a few float32 ulps); a wrong split moves them by ~1e-3.
* float32, the real CLI on the tiny checkpoint: every logged loss within rtol 1e-3 (measured <= 5e-5;
  another seed or split differs by 10-90%), i.e. same data, noise and model state at every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcm_accel.fixtures import shared_models_root

HERE = Path(__file__).resolve().parent
pytest.importorskip("accelerate")


def launch(args: list[str], cwd: Path, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` with N CPU processes (torchrun under --multi_gpu: accelerate's --cpu flag starts
    one process unless given an MPI hostfile)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(29500 + os.getpid() % 1000),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].double(), b[name].double(), rtol=0, atol=atol, msg=name)


def test_two_processes_train_what_one_does_and_resume_on_one(tmp_path, one_thread):
    from distributed_train_job import run_job

    launch([str(HERE / "distributed_train_job.py"), "w2", "r2", "--snapshot-at", "2"], cwd=tmp_path)
    two, rank1 = _load(tmp_path / "r2.rank0.pt"), _load(tmp_path / "r2.rank1.pt")
    assert two["num_processes"] == 2
    for key in ("params", "ema", "proxy"):  # kept in sync: bitwise the same on both processes
        _close(two[key], rank1[key], atol=0.0)
    run_job(tmp_path / "w1", tmp_path / "r1", steps=4)
    one = _load(tmp_path / "r1.rank0.pt")
    assert one["num_processes"] == 1
    _close(two["params"], one["params"], atol=1e-7)
    _close(two["ema"], one["ema"], atol=1e-7)
    _close(two["proxy"], one["proxy"], atol=1e-6)
    assert [r["step"] for r in two["log"]] == [r["step"] for r in one["log"]] == [0, 1, 2, 3]
    for a, b in zip(two["log"], one["log"]):
        for key in ("loss", "lcd", "reward", "proxy_mse"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)
    moved = max((one["params"][n] - p).abs().max().item() for n, p in _load_initial().items())
    assert moved > 1e-3  # the tolerance is far below what training changed
    # the checkpoint written by 2 processes at step 2, resumed on 1 process to step 4
    run_job(tmp_path / "w2.at2", tmp_path / "rr", steps=4)
    resumed = _load(tmp_path / "rr.rank0.pt")
    _close(resumed["params"], one["params"], atol=1e-7)
    _close(resumed["ema"], one["ema"], atol=1e-7)
    _close(resumed["proxy"], one["proxy"], atol=1e-6)
    for a, b in zip(resumed["log"], one["log"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)


def _load_initial() -> dict:
    from distributed_train_job import _build

    class One:
        num_processes, process_index = 1, 0

    task, _ = _build(One())
    return {n: p.detach().clone() for n, p in task.trainable_parameters()}


def _data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture number {i}")
    return folder


def _losses(work: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (work / "loss.jsonl").read_text().splitlines()]


def test_cli_under_accelerate_launch_and_resume_with_another_process_count(tmp_path, one_thread, capsys):
    from lcm_accel.cli import main

    data = _data(tmp_path / "data")
    base = shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors"
    common = [
        "--base",
        str(base),
        "--data",
        str(data),
        "--rank",
        "4",
        "--resolution",
        "64",
        "--lr",
        "1e-5",
        "--ema",
        "0.9",
        "--device",
        "cpu",
        "--no-progress",
        "--checkpoint-every",
        "0",
    ]
    out = launch(
        ["-m", "lcm_accel", "train", "lcm-lora", *common, "--out", "two.safetensors", "--batch", "2", "--steps", "2"],
        cwd=tmp_path,
    )
    assert "effective batch 4 (--batch 2 x 2 process(es) x --grad-accum 1); learning rate 1e-05" in out.stdout
    assert out.stdout.count("wrote two.safetensors") == 1  # the main process writes, once
    work = tmp_path / "two.safetensors.work"
    assert sorted(p.name for p in (work / "checkpoint").iterdir()) == ["rng_0.pt", "rng_1.pt", "state.pt"]
    assert len(_losses(work)) == 2

    assert (
        main(["train", "lcm-lora", *common, "--out", str(tmp_path / "one.safetensors"), "--batch", "4", "--steps", "3"])
        == 0
    )
    one = _losses(tmp_path / "one.safetensors.work")
    np.testing.assert_allclose(_losses(work), one[:2], rtol=1e-3)

    capsys.readouterr()
    resume = [
        "train",
        "lcm-lora",
        *common,
        "--out",
        str(tmp_path / "two.safetensors"),
        "--steps",
        "3",
        "--resume",
        str(work),
    ]
    assert main(resume + ["--batch", "2"]) == 2  # 1 x 2 is not the global batch of 4
    error = capsys.readouterr().err
    assert "global batch of 4" in error and "pass --batch 4" in error
    assert main(resume + ["--batch", "4"]) == 0
    np.testing.assert_allclose(_losses(work), one, rtol=1e-3)


def test_batch_sources_refuse_a_checkpoint_they_cannot_continue_exactly():
    from lcm_accel.training.data import ShuffledBatches
    from lcm_accel.training.qalora_task import TrajectoryBatches

    data = [{"i": i} for i in range(10)]
    two = ShuffledBatches(data, 2, seed=1, process_index=1, num_processes=2)
    for _ in range(3):
        two.next_batch()
    state = two.state_dict()
    one = ShuffledBatches(data, 4, seed=1)
    one.load_state_dict(state)  # 2 x 2 -> 1 x 4: the same global batch, the same position
    reference = ShuffledBatches(data, 4, seed=1)
    for _ in range(3):
        reference.next_batch()
    assert one.next_batch() == reference.next_batch()
    with pytest.raises(ValueError, match="global batch of 4.*pass --batch 4"):
        ShuffledBatches(data, 2, seed=1).load_state_dict(state)
    trajectories = TrajectoryBatches(None, None, ["a"], 2, (1, 4, 8, 8), num_processes=2, process_index=1)
    trajectories.position = 5
    with pytest.raises(ValueError, match="same process count and --batch"):
        TrajectoryBatches(None, None, ["a"], 2, (1, 4, 8, 8)).load_state_dict(trajectories.state_dict())


def test_a_launch_accelerate_did_not_join_is_refused(monkeypatch):
    from types import SimpleNamespace

    from lcm_accel.processes import check_world, state_kwargs

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert state_kwargs(None) == {"cpu": True} and state_kwargs("auto") == {"cpu": True}
    check_world(SimpleNamespace(num_processes=2))
    with pytest.raises(RuntimeError, match="2 processes were launched but accelerate joined 1.*--device cpu"):
        check_world(SimpleNamespace(num_processes=1))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert state_kwargs(None) == {"cpu": False} and state_kwargs("cpu") == {"cpu": True}
