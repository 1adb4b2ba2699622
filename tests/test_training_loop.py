"""The generic loop with the LCM-LoRA task on a micro UNet: learning, logs, interrupt + resume."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import ToyBatches, micro_unet, one_thread

from lcm_accel.lcm_scheduler.schedule import make_alphas_cumprod
from lcm_accel.training.distill import DistillSettings, LCMDistillTask, teacher_fn, unet_fn
from lcm_accel.training.lcd import LCDDraw, LCDSettings, lcd_loss
from lcm_accel.training.loop import LoopConfig, train
from lcm_accel.training.rewards import colorfulness
from lcm_accel.training.student import add_lora

ACP = make_alphas_cumprod()

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _task(settings: DistillSettings, reward=None):
    unet = micro_unet(0)
    torch.manual_seed(0)
    params = add_lora(unet, 4)
    decode = (lambda z: torch.sigmoid(z[:, :3])) if reward else None
    return LCMDistillTask(unet, params, ACP, settings, reward=reward, decode=decode)


def _eval_loss(task: LCMDistillTask) -> float:
    """The LCD loss on a fixed set of draws (what training should lower)."""
    data = ToyBatches(batch=8).next_batch()
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for _ in range(3):
        draw = LCDDraw(
            torch.randint(0, 50, (8,), generator=g), torch.randn(8, 4, 8, 8, generator=g), torch.full((8,), 3.0)
        )
        with torch.no_grad():
            out = lcd_loss(
                unet_fn(task.model),
                teacher_fn(task.model),
                unet_fn(task.model),
                data["latents"],
                data["cond"],
                data["uncond"],
                ACP,
                task.grid,
                draw,
                task.settings.lcd,
            )
        total += float(out.loss)
    return total / 3


def test_a_short_run_lowers_the_loss_and_writes_log_and_plot(tmp_path):
    task = _task(DistillSettings(lcd=LCDSettings(w=3.0, loss="l2")))
    before = _eval_loss(task)
    result = train(
        task, ToyBatches(batch=4), LoopConfig(steps=80, work_dir=tmp_path, lr=3e-3, device="cpu", progress=False)
    )
    after = _eval_loss(task)
    assert result.steps_done == 80 and not result.interrupted
    assert after < 0.75 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(80))
    from PIL import Image

    with Image.open(tmp_path / "loss.png") as image:
        assert image.size == (720, 400)


class InterruptAt:
    """Batches that raise KeyboardInterrupt (as Ctrl-C would) when step `k`'s batch is requested."""

    def __init__(self, inner, k: int):
        self.inner, self.k, self.calls = inner, k, 0

    def next_batch(self):
        if self.calls == self.k:
            self.calls += 1
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.next_batch()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_interrupt_and_resume_equal_an_uninterrupted_run(tmp_path):
    """EMA target, reward with a latent proxy, sampled w: every piece of state must survive."""
    settings = DistillSettings(lcd=LCDSettings(w_min=2, w_max=6), reward_scale=0.05, latent_proxy=True, ema_rate=0.9)
    config = dict(steps=6, lr=1e-3, device="cpu", progress=False, seed=7, checkpoint_every=4)

    straight = _task(settings, colorfulness)
    train(straight, ToyBatches(), LoopConfig(work_dir=tmp_path / "a", **config))

    first = _task(settings, colorfulness)
    result = train(first, InterruptAt(ToyBatches(), 3), LoopConfig(work_dir=tmp_path / "b", **config))
    assert result.interrupted and result.steps_done == 3
    resumed = _task(settings, colorfulness)  # a fresh process: new model, new LoRA init, new data
    result = train(resumed, ToyBatches(), LoopConfig(work_dir=tmp_path / "b", **config))
    assert result.steps_done == 6 and not result.interrupted

    for (name, a), (_, b) in zip(straight.trainable_parameters(), resumed.trainable_parameters()):
        assert torch.equal(a, b), name
    for name in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[name], resumed.ema.shadow[name]), name
    for a, b in zip(straight.proxy.parameters(), resumed.proxy.parameters()):
        assert torch.equal(a, b)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert log_a == log_b and "reward" in log_a[0] and "proxy_mse" in log_a[0]


def test_loop_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        LoopConfig(steps=0, work_dir=tmp_path)
    with pytest.raises(ValueError, match="mixed-precision"):
        LoopConfig(steps=1, work_dir=tmp_path, mixed_precision="fp8")


def test_full_model_distillation_with_an_explicit_teacher(tmp_path):
    """All UNet parameters trainable, a separate frozen teacher, an EMA of the whole student: the
    loss is the one of that teacher, and a step moves the student and its EMA, never the teacher."""
    import copy

    from lcm_accel.training.lcd import draw_lcd_inputs

    student = micro_unet(0).requires_grad_(True)
    teacher_unet = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        for p in student.parameters():  # student != teacher, so a teacher taken from the student would show
            p.add_(torch.randn_like(p) * 0.01)
    params = list(student.named_parameters())
    settings = DistillSettings(lcd=LCDSettings(w=3.0), ema_rate=0.9)
    task = LCMDistillTask(student, params, ACP, settings, teacher=unet_fn(teacher_unet))

    batch = ToyBatches(batch=2).next_batch()
    ctx = type("Ctx", (), {"generator": torch.Generator().manual_seed(5)})()
    with torch.no_grad():
        loss, _ = task.compute_loss(student, batch, ctx)
        draw = draw_lcd_inputs(batch["latents"], task.grid, settings.lcd, torch.Generator().manual_seed(5))
        ref = lcd_loss(
            unet_fn(student),
            unet_fn(teacher_unet),
            unet_fn(student),
            batch["latents"],
            batch["cond"],
            batch["uncond"],
            ACP,
            task.grid,
            draw,
            settings.lcd,
        )  # EMA == student before any step
    assert torch.equal(loss, ref.loss)

    teacher_before = {k: v.clone() for k, v in teacher_unet.state_dict().items()}
    student_before = {n: p.detach().clone() for n, p in params}
    train(task, ToyBatches(batch=2), LoopConfig(steps=2, work_dir=tmp_path, lr=1e-3, device="cpu", progress=False))
    for k, v in teacher_unet.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    changed = [n for n, p in params if not torch.equal(p.detach(), student_before[n])]
    assert len(changed) > 0.9 * len(params), (len(changed), len(params))
    assert any(not torch.equal(task.ema.shadow[n], student_before[n]) for n in changed)
    assert all(p.requires_grad for _, p in params) and not any(p.requires_grad for p in teacher_unet.parameters())


def test_ema_target_under_autocast_leaves_the_student_on_its_live_weights():
    """autocast caches the low-precision cast of a trainable weight by parameter; after the EMA target
    pass, the student pass in the same autocast region must not reuse the casts of the EMA weights."""
    from lcm_accel.training.student import LoraEMA

    unet = micro_unet(0)
    torch.manual_seed(0)
    params = add_lora(unet, 4)
    with torch.no_grad():
        for _, p in params:
            p.normal_(0, 0.2)
    ema = LoraEMA(params, 0.5)
    with torch.no_grad():
        for shadow in ema.shadow.values():
            shadow.normal_(0, 0.2)  # the EMA differs from the live LoRA
    live = {n: p.detach().clone() for n, p in params}
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    cond = {"encoder_hidden_states": torch.randn(2, 3, 16)}
    model = unet_fn(unet)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad(), ema.swapped_in():
            target = model(x, t, cond)
        student = model(x, t, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = model(x, t, cond)
    assert torch.equal(student, fresh) and not torch.equal(student, target)
    assert all(torch.equal(p.detach(), live[n]) for n, p in params)


class _PromptRecordingReward:
    """A prompt-conditioned reward: images score higher when their mean matches a per-prompt level."""

    prompt_conditioned = True
    levels = {"dark": 0.2, "bright": 0.8}

    def __init__(self):
        self.seen: list[list[str]] = []

    def __call__(self, images, prompts):
        self.seen.append(list(prompts))
        target = images.new_tensor([self.levels[p] for p in prompts])
        return -((images.flatten(1).mean(dim=1) - target) ** 2)


@pytest.mark.parametrize("proxy", [False, True])
def test_prompt_conditioned_rewards_get_each_sample_its_own_prompt(proxy):
    from types import SimpleNamespace

    reward = _PromptRecordingReward()
    task = _task(DistillSettings(lcd=LCDSettings(w=3.0), reward_scale=0.1, latent_proxy=proxy), reward=reward)
    batch = ToyBatches(batch=2).next_batch()
    ctx = SimpleNamespace(generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no 'prompts'"):
        task.compute_loss(task.model, batch, ctx)
    prompts = ["dark", "bright"]
    loss, metrics = task.compute_loss(task.model, {**batch, "prompts": prompts}, ctx)
    assert reward.seen[-1] == prompts and torch.isfinite(loss) and "reward" in metrics
    if proxy:
        # the proxy is conditioned on the prompt's text embedding (FiLM, starting at identity) and has
        # learnt from it after its first regression step
        assert task.proxy.text is not None and task.proxy.text.weight.abs().sum() > 0
        text = batch["cond"]["encoder_hidden_states"].mean(dim=1)
        latents = torch.randn(2, 4, 8, 8)
        assert not torch.allclose(task.proxy(latents, text), task.proxy(latents, text.flip(0)))
    else:
        assert task.proxy is None
