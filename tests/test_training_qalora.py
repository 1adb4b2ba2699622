"""QALoRA fine-tuning on the trainer's loop: the distillation loss falls, interrupt + resume equals an
uninterrupted run, the exported checkpoint reloads through the standalone loader as export_qalora's
model, and `train qalora` end to end on the tiny SD1.5 checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from training_helpers import micro_unet, one_thread

from lcm_accel.fixtures import shared_models_root
from lcm_accel.quantize import quantized_layers
from lcm_accel.quantize.qalora import build_qalora_student, export_qalora, qalora_step
from lcm_accel.training.loop import LoopConfig, train
from lcm_accel.training.qalora_task import OnDevice, QALoRATask, TrajectoryBatches

_one_thread = pytest.fixture(autouse=True)(one_thread)
CKPT = "tiny_sd15.safetensors"


def _conditioning(prompts: list[str]) -> dict:
    """Toy text conditioning: a fixed embedding per prompt (3 tokens x 16)."""
    embeds = [torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(sum(map(ord, p)))) for p in prompts]
    return {"encoder_hidden_states": torch.cat(embeds)}


def _setup(fmt: str = "int4", act_bits: int | None = 8, lora_seed: int = 0):
    teacher = micro_unet(3)
    torch.manual_seed(lora_seed)
    student = build_qalora_student(teacher, fmt, rank=4, num_steps=2, act_bits=act_bits, group_size=16)
    batches = TrajectoryBatches(
        OnDevice(teacher), _conditioning, ["a", "b", "c"], steps=2, latent_shape=(2, 4, 8, 8), seed=0
    )
    task = QALoRATask(student, teacher, calibration=batches.trajectory(0), step_lr=1e-3)
    return teacher, task, batches


def _held_out_loss(task: QALoRATask, teacher) -> float:
    batches = TrajectoryBatches(OnDevice(teacher), _conditioning, ["d", "e"], 2, (2, 4, 8, 8), seed=99)
    trajectory = batches.trajectory(0)
    with torch.no_grad():
        return sum(float(qalora_step(task.model, task.teacher, trajectory, i)) for i in range(2))


class InterruptAt:
    """Batches raising KeyboardInterrupt (as a second Ctrl-C would) when batch `k` is requested."""

    def __init__(self, inner, k: int):
        self.inner, self.k, self.calls = inner, k, 0

    def next_batch(self):
        self.calls += 1
        if self.calls - 1 == self.k:
            raise KeyboardInterrupt
        return self.inner.next_batch()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_a_short_run_lowers_the_distillation_loss(tmp_path):
    teacher, task, batches = _setup("int4", act_bits=8)
    before = _held_out_loss(task, teacher)
    steps_before = {n: p.detach().clone() for n, p in task.trainable_parameters() if "lora_" not in n}
    result = train(task, batches, LoopConfig(steps=30, work_dir=tmp_path, lr=1e-2, device="cpu", progress=False))
    after = _held_out_loss(task, teacher)
    assert result.steps_done == 30 and [r["sampling_step"] for r in result.log[:4]] == [0.0, 1.0, 0.0, 1.0]
    assert after < 0.8 * before, (before, after)
    changed = [n for n, p in task.trainable_parameters() if n in steps_before and not torch.equal(p, steps_before[n])]
    assert any(n.endswith("act_quant.step_sizes") for n in changed) and any(n.endswith("weight_steps") for n in changed)


def test_learning_rates_are_scale_aware():
    _, task, _ = _setup("int8")
    groups = task.optimizer_groups(0.5)
    lora_ids = {id(p) for name, p in task.trainable_parameters() if "lora_" in name}
    assert groups[0]["lr"] == 0.5 and {id(p) for p in groups[0]["params"]} == lora_ids
    for group in groups[1:]:
        (p,) = group["params"]
        assert group["lr"] == pytest.approx(1e-3 * float(p.detach().abs().mean()))
    covered = sum(len(g["params"]) for g in groups)
    assert covered == len(task.trainable_parameters())


def test_interrupt_and_resume_equal_an_uninterrupted_run(tmp_path):
    config = dict(steps=6, lr=1e-2, device="cpu", progress=False, seed=3, checkpoint_every=4)
    _, straight, batches = _setup()
    train(straight, batches, LoopConfig(work_dir=tmp_path / "a", **config))

    _, first, batches = _setup()
    result = train(first, InterruptAt(batches, 3), LoopConfig(work_dir=tmp_path / "b", **config))
    assert result.interrupted and result.steps_done == 3
    _, resumed, batches = _setup(lora_seed=5)  # a fresh process: the LoRA init differs, the checkpoint wins
    result = train(resumed, batches, LoopConfig(work_dir=tmp_path / "b", **config))
    assert result.steps_done == 6 and not result.interrupted
    assert batches.position == 6
    for (name, a), (_, b) in zip(straight.trainable_parameters(), resumed.trainable_parameters()):
        assert torch.equal(a, b), name
    log_a = [json.loads(x) for x in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert log_a == log_b


def _tiny_checkpoint():
    from lcm_accel.runtime.checkpoints import load_checkpoint

    path = shared_models_root() / "models" / "checkpoints" / CKPT
    return path, *load_checkpoint(path)


def _models_dir(tmp_path):
    """tmp_path/models/checkpoints with a tokenizer beside it (the loader looks there for outputs)."""
    from lcm_accel.fixtures import write_clip_tokenizer

    write_clip_tokenizer(tmp_path / "models" / "tokenizers" / "clip")
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def test_exported_checkpoint_loads_as_export_qalora_output(tmp_path):
    from lcm_accel.runtime.checkpoints import load_checkpoint
    from lcm_accel.runtime.quantized import write_quantized_checkpoint
    from lcm_accel.training.qalora_task import quantized_model_host

    path, model, _, _ = _tiny_checkpoint()
    teacher = copy.deepcopy(model.unet).float().eval()
    torch.manual_seed(0)
    student = build_qalora_student(teacher, "int4", rank=4, num_steps=2, act_bits=None, group_size=32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "trained" student: non-zero LoRA, moved step sizes
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "weight_steps" in name:
                p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))
    exported = export_qalora(student)
    host = quantized_model_host(model, exported, "int4", 32, "default", teacher)
    out = write_quantized_checkpoint(_models_dir(tmp_path) / "q.safetensors", host, path)
    loaded, _, _ = load_checkpoint(out)

    names = [n for n, _ in quantized_layers(loaded.unet)]
    assert names == [n for n, _ in quantized_layers(exported)] and names
    expected = exported.state_dict()
    for key, value in loaded.unet.state_dict().items():
        assert torch.equal(value, expected[key]), key
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, teacher.config.cross_attention_dim, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        got = loaded.unet(x, t, encoder_hidden_states=cond).sample
        want = exported(x, t, encoder_hidden_states=cond).sample
        plain = teacher(x, t, encoder_hidden_states=cond).sample
    assert torch.equal(got, want)
    assert not torch.allclose(got, plain, atol=1e-4)  # the LoRA and steps are in the weights


def test_cli_train_qalora_end_to_end(tmp_path, capsys):
    from lcm_accel.cli import main
    from lcm_accel.quantize import read_quant_metadata
    from lcm_accel.runtime.checkpoints import load_checkpoint

    path = shared_models_root() / "models" / "checkpoints" / CKPT
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red house\n\na blue bird\n")
    out = _models_dir(tmp_path) / "q8.safetensors"
    args = [
        "train",
        "qalora",
        "--base",
        str(path),
        "--format",
        "int8",
        "--rank",
        "4",
        "--steps",
        "4",
        "--lcm-steps",
        "2",
        "--prompts",
        str(prompts),
        "--resolution",
        "64",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--checkpoint-every",
        "2",
    ]
    assert main(args) == 0
    assert "weight-only" in capsys.readouterr().out
    recipe = read_quant_metadata(out)
    assert recipe["format"] == "int8" and "conv_in" in recipe["kept_layers"]
    loaded, _, _ = load_checkpoint(out)
    assert len(quantized_layers(loaded.unet)) == len(recipe["quantized_layers"]) > 0
    rows = (out.parent / "q8.safetensors.work" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(r)["sampling_step"] for r in rows] == [0.0, 1.0, 0.0, 1.0]

    # the same work dir again without --resume is refused; --resume continues it (already done: 4 steps)
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume", str(out.parent / "q8.safetensors.work"), "--steps", "5"]) == 0
    rows = (out.parent / "q8.safetensors.work" / "loss.jsonl").read_text().splitlines()
    assert len(rows) == 5


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    from lcm_accel.cli import main

    path = shared_models_root() / "models" / "checkpoints" / CKPT
    base = ["train", "qalora", "--base", str(path), "--format", "int4", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "x.ckpt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.safetensors"), "--prompts", str(tmp_path / "none.txt")]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.safetensors"), "--keep", "no_such_layer*"]) == 2
    assert "no_such_layer" in capsys.readouterr().err
