"""DeepCache feature caching: schedules, the diffusers mechanism, and parity with the `DeepCache` package."""

from __future__ import annotations

import ast
import copy
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lcm_accel.feature_cache import (
    DeepCacheSettings,
    DeepCacheUNet,
    FeatureStreams,
    SigmaSteps,
    count_macs,
    example_inputs,
    full_steps,
    skipped_fraction,
    skipped_modules,
    step_of_sigma,
)

NUM_STEPS = 10


@pytest.fixture(scope="module")
def unet():
    from lcm_accel.fixtures.tiny_models import build_tiny_sd15

    return build_tiny_sd15(seed=0).unet


def _inputs(batch: int = 2, size: int = 8, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, size, size, generator=generator)
    context = torch.randn(batch, 7, 64, generator=generator)
    return latents, context


def _timesteps() -> torch.Tensor:
    return torch.linspace(999, 0, NUM_STEPS).round().long()


def _euler_loop(call, latents, context, guidance=3.0):
    """A DDIM-like eps loop with cond and uncond batched into one UNet call per step."""
    alphas = torch.cos(torch.linspace(0.05, 1.5, 1000)) ** 2
    timesteps = _timesteps()
    batch = context.shape[0]
    for i, t in enumerate(timesteps):
        eps = call(latents.expand(batch, -1, -1, -1), t, context)
        if batch == 2:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        a_t = alphas[t]
        a_next = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        x0 = (latents - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        latents = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return latents


def _plain(unet):
    return lambda x, t, c: unet(x, t, encoder_hidden_states=c).sample


def _forward_state(module: torch.nn.Module) -> dict:
    return {name: (set(m.__dict__), m.__dict__.get("forward")) for name, m in module.named_modules()}


# --- schedule ---------------------------------------------------------------------------------


def _reference_quad_center():
    """LCMAccel_DeepCache's own `sample_from_quad_center`, taken from the installed package's pipeline file
    (the module itself imports diffusers names that no longer exist)."""
    deepcache = pytest.importorskip("DeepCache")
    path = Path(deepcache.__file__).parent / "sd" / "pipeline_stable_diffusion.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample_from_quad_center")
    namespace = {"np": np}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace["sample_from_quad_center"]


def test_uniform_schedule_matches_deepcache_pipeline_rule():
    for steps, interval in [(10, 1), (10, 2), (10, 3), (25, 5), (4, 2), (8, 3), (1, 4)]:
        expected = [i % interval == 0 for i in range(steps)]  # DeepCache: range(0, steps, interval)
        assert full_steps(steps, interval) == expected


@pytest.mark.parametrize(
    "steps,interval,center", [(50, 5, 15), (50, 3, 15), (25, 3, 7), (10, 2, 3), (8, 2, 2), (50, 5, 0)]
)
def test_non_uniform_schedule_matches_deepcache(steps, interval, center):
    reference = _reference_quad_center()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about dropping the imaginary part, as DeepCache does
        expected, _ = reference(steps, -(-steps // interval), center=center, pow=1.4)
        flags = full_steps(steps, interval, uniform=False, center=center, power=1.4)
    assert [i for i, full in enumerate(flags) if full] == sorted(int(i) for i in expected)


def test_schedule_window_keeps_outside_steps_full():
    flags = full_steps(10, 3, start_percent=0.2, end_percent=0.8)
    window = [i for i in range(10) if 0.2 <= i / 10 < 0.8]
    assert all(flags[i] for i in range(10) if i not in window)
    assert [flags[i] for i in window] == [k % 3 == 0 for k in range(len(window))]
    assert full_steps(10, 3, start_percent=0.5, end_percent=0.5) == [True] * 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nonuniform = full_steps(20, 3, start_percent=0.25, end_percent=1.0, uniform=False)
    assert all(nonuniform[:5]) and nonuniform[5] and sum(nonuniform[5:]) == -(-15 // 3)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_steps=0, interval=2), "num_steps"),
        (dict(num_steps=10, interval=0), "interval"),
        (dict(num_steps=10, interval=2.5), "interval"),
        (dict(num_steps=10, interval=2, start_percent=-0.1), "start_percent"),
        (dict(num_steps=10, interval=2, end_percent=1.5), "end_percent"),
        (dict(num_steps=10, interval=2, start_percent=0.6, end_percent=0.4), "start_percent"),
        (dict(num_steps=10, interval=2, uniform=False, power=1.0), "power"),
        (dict(num_steps=10, interval=2, uniform=False, center=10), "center"),
        (dict(num_steps=10, interval=2, uniform=True, center=3), "center"),
    ],
)
def test_schedule_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        full_steps(**kwargs)


# --- mechanism --------------------------------------------------------------------------------


@pytest.mark.parametrize("branch", [0, 5])
def test_interval_one_is_bit_identical(unet, branch):
    latents, context = _inputs()
    expected = _euler_loop(_plain(unet), latents, context)
    with DeepCacheUNet(unet, branch, full_steps(NUM_STEPS, 1)) as cached:
        got = _euler_loop(_plain(unet), latents, context)
        assert cached.stats == {"full": NUM_STEPS, "partial": 0, "forced_full": 0}
    assert torch.equal(got, expected)


@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("branch", [0, 5, 11])
def test_matches_deepcache_sd_helper(unet, interval, branch):
    deepcache = pytest.importorskip("DeepCache")
    latents, context = _inputs()
    reference_unet = copy.deepcopy(unet)  # the helper leaves bound methods behind on the modules it wraps
    helper = deepcache.DeepCacheSDHelper(
        pipe=SimpleNamespace(unet=reference_unet, scheduler=SimpleNamespace(timesteps=_timesteps()))
    )
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        expected = _euler_loop(_plain(reference_unet), latents, context)
    finally:
        helper.disable()
    plain = _euler_loop(_plain(unet), latents, context)
    with DeepCacheUNet(unet, branch, full_steps(NUM_STEPS, interval)) as cached:
        got = _euler_loop(_plain(unet), latents, context)
        assert cached.stats["partial"] == NUM_STEPS - len(range(0, NUM_STEPS, interval))
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-4, rtol=0)  # caching really changed the result


def test_separate_chunks_keep_their_own_features(unet):
    latents, context = _inputs()
    flags = full_steps(NUM_STEPS, 3)
    with DeepCacheUNet(unet, 2, flags) as cached:
        batched = _euler_loop(_plain(unet), latents, context)

    def per_chunk(x, t, c):
        uncond = cached(x[:1], t, encoder_hidden_states=c[:1], chunk="uncond").sample
        cond = cached(x[1:], t, encoder_hidden_states=c[1:], chunk="cond").sample
        return torch.cat([uncond, cond])

    def one_key(x, t, c):  # both chunks through one key: each call is a step, features get mixed
        uncond = cached(x[:1], t, encoder_hidden_states=c[:1]).sample
        cond = cached(x[1:], t, encoder_hidden_states=c[1:]).sample
        return torch.cat([uncond, cond])

    with DeepCacheUNet(unet, 2, flags) as cached:
        chunked = _euler_loop(per_chunk, latents, context)
        assert cached.stats["partial"] == 2 * flags.count(False)
    with DeepCacheUNet(unet, 2, flags * 2) as cached:
        mixed = _euler_loop(one_key, latents, context)
    # batch 1 vs batch 2 convolutions round differently; measure that noise on the plain UNet
    plain_chunks = lambda x, t, c: torch.cat([_plain(unet)(x[i : i + 1], t, c[i : i + 1]) for i in range(2)])
    noise = (_euler_loop(plain_chunks, latents, context) - _euler_loop(_plain(unet), latents, context)).abs().max()
    assert (chunked - batched).abs().max() <= 10 * noise + 1e-5
    assert (mixed - batched).abs().max() > 100 * noise


def test_batch_or_resolution_change_never_reuses_stale_features(unet):
    _, context = _inputs()
    t = torch.tensor(500)
    x2 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    x1, x_big = x2[:1], torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected_1 = unet(x1, t, encoder_hidden_states=context[:1]).sample
        expected_big = unet(x_big, t, encoder_hidden_states=context[:1]).sample
        with DeepCacheUNet(unet, 0, [True, False, False, False]) as cached:
            unet(x2, t, encoder_hidden_states=context)
            got_1 = unet(x1, t, encoder_hidden_states=context[:1]).sample  # batch 2 -> 1 on a partial step
            got_big = unet(x_big, t, encoder_hidden_states=context[:1]).sample  # 8x8 -> 16x16
            assert cached.stats == {"full": 3, "partial": 0, "forced_full": 2}
            unet(x_big, t, encoder_hidden_states=context[:1])  # same shape again: reuses
            assert cached.stats["partial"] == 1
            with pytest.raises(RuntimeError, match="the schedule has 4 steps"):
                unet(x_big, t, encoder_hidden_states=context[:1])
    assert torch.equal(got_1, expected_1) and torch.equal(got_big, expected_big)


def test_new_run_starts_with_an_empty_cache(unet):
    latents, context = _inputs()
    flags = [False] * NUM_STEPS  # a run that starts partial must still compute its first step
    cache = DeepCacheUNet(unet, 0, flags)
    with cache:
        first = _euler_loop(_plain(unet), latents, context)
    with cache:
        again = _euler_loop(_plain(unet), latents, context)
        assert cache.stats["forced_full"] == 1
    assert torch.equal(first, again)


def test_exit_restores_forwards_even_after_an_error(unet):
    latents, context = _inputs()
    before = _forward_state(unet)
    expected = _euler_loop(_plain(unet), latents, context)
    with pytest.raises(ZeroDivisionError):
        with DeepCacheUNet(unet, 3, full_steps(NUM_STEPS, 2)):
            assert _forward_state(unet) != before
            unet(latents.expand(2, -1, -1, -1), _timesteps()[0], encoder_hidden_states=context)
            1 / 0  # noqa: B018 (an error inside the context)
    assert _forward_state(unet) == before
    assert torch.equal(_euler_loop(_plain(unet), latents, context), expected)


def test_bad_branch_is_refused(unet):
    with pytest.raises(ValueError, match="branch 12"):
        DeepCacheUNet(unet, 12, [True])
    with pytest.raises(ValueError, match="branch"):
        DeepCacheUNet(unet, -1, [True])


# --- FLOPs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("branch", [0, 1, 2, 5, 11])
def test_skipped_fraction_matches_macs_of_a_real_partial_step(unet, branch):
    """Our partial step runs exactly the modules DeepCacheSDHelper's partial step runs."""
    deepcache = pytest.importorskip("DeepCache")
    inputs = example_inputs(unet, 8, 8)
    call = lambda: unet(**inputs)
    full = count_macs(unet, call)
    with DeepCacheUNet(unet, branch, [True, False]):
        call()
        partial = count_macs(unet, call)

    reference_unet = copy.deepcopy(unet)
    timesteps = torch.tensor([700, 500])
    helper = deepcache.DeepCacheSDHelper(
        pipe=SimpleNamespace(unet=reference_unet, scheduler=SimpleNamespace(timesteps=timesteps))
    )
    helper.set_params(cache_interval=2, cache_branch_id=branch)
    helper.enable()
    try:
        with torch.no_grad():
            reference_unet(inputs["sample"], timesteps[0], encoder_hidden_states=inputs["encoder_hidden_states"])
        reference = count_macs(
            reference_unet,
            lambda: reference_unet(
                inputs["sample"], timesteps[1], encoder_hidden_states=inputs["encoder_hidden_states"]
            ),
        )
    finally:
        helper.disable()
    assert partial == reference
    fraction = skipped_fraction(unet, branch, 8, 8)
    assert 0 < fraction < 1
    assert fraction == pytest.approx(1 - sum(partial.values()) / sum(full.values()), rel=1e-12)


def test_mac_count_of_a_conv_and_an_attention(unet):
    inputs = example_inputs(unet, 8, 8, context_length=7)
    macs = count_macs(unet, lambda: unet(**inputs))
    assert macs["conv_in"] == 8 * 8 * 32 * 4 * 9
    attention = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    inner = attention.attn2.inner_dim
    assert macs["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == 2 * 64 * 7 * inner
    assert macs["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 2 * 64 * 64 * inner
    assert skipped_modules(unet, 11) == ["mid_block"]


def test_explicit_step_for_several_calls_per_step(unet):
    latents, context = _inputs(batch=1)
    t = torch.tensor(500)
    with torch.no_grad(), DeepCacheUNet(unet, 0, [True, False]) as cached:
        full = [cached(latents, t, encoder_hidden_states=context, step=0).sample for _ in range(2)]
        partial = [cached(latents, t, encoder_hidden_states=context, step=1).sample for _ in range(2)]
        assert cached.stats == {"full": 2, "partial": 2, "forced_full": 0}
    assert torch.equal(full[0], full[1]) and torch.equal(partial[0], partial[1])
    with pytest.raises(RuntimeError, match="not active"):
        cached(latents, t, encoder_hidden_states=context)


# --- the per-run state shared by both hosts ------------------------------------------------------
def test_step_of_sigma_places_every_call_of_a_sampler():
    sigmas = [14.6, 6.0, 2.5, 0.9, 0.0]
    assert [step_of_sigma(s, sigmas) for s in sigmas[:-1]] == [0, 1, 2, 3]
    assert step_of_sigma(6.0 * (1 + 1e-7), sigmas) == 1  # float noise of a host's sigma tensor
    assert step_of_sigma((6.0 * 2.5) ** 0.5, sigmas) == 1  # a DPM2-style midpoint lies inside step 1
    assert step_of_sigma(0.0, sigmas) == 3 and step_of_sigma(20.0, sigmas) == 0
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        step_of_sigma(1.0, [1.0])


def test_sigma_steps_give_repeated_calls_their_own_stream():
    """Heun evaluates at sigma[i+1] at the end of step i and again at the start of step i+1: the two
    calls are different streams (each continues its own chain of features)."""
    steps = SigmaSteps([10.0, 5.0, 2.0, 0.0])
    heun = [(10.0, 0), (5.0, 1), (5.0, 1), (2.0, 2), (2.0, 2)]
    located = [steps.locate("cond", sigma) for sigma, _ in heun]
    assert [step for _, step in located] == [expected for _, expected in heun]
    assert [stream for stream, _ in located] == [("cond", 0), ("cond", 0), ("cond", 1), ("cond", 0), ("cond", 1)]
    assert steps.locate("uncond", 10.0) == (("uncond", 0), 0)


def test_feature_streams_reuse_only_a_completed_full_call_of_the_same_input():
    streams = FeatureStreams([True, False, False, True])
    signature = ((1, 4, 8, 8), torch.float32, torch.device("cpu"))
    first = streams.begin("a", signature)
    assert not first.partial
    first.features["deep"] = 1
    streams.complete(first)
    second = streams.begin("a", signature)
    assert second.partial and second.features == {"deep": 1} and second.step == 1
    assert not streams.begin("b", signature, step=1).partial  # another stream has nothing cached yet
    other_size = ((1, 4, 16, 16), torch.float32, torch.device("cpu"))
    assert not streams.begin("a", other_size, step=2).partial
    assert streams.stats == {"full": 3, "partial": 1, "forced_full": 2}
    failed = FeatureStreams([True, False])
    failed.begin("a", signature)  # a full call that raised: never completed
    assert not failed.begin("a", signature).partial
    with pytest.raises(RuntimeError, match="step 4 of stream 'a', but the schedule has 4 steps"):
        streams.begin("a", signature, step=4)


def test_settings_are_checked_and_give_the_schedule():
    settings = DeepCacheSettings(interval=3, branch=2, start_percent=0.25, end_percent=1.0)
    assert settings.full_step_flags(8) == full_steps(8, 3, 0.25, 1.0)
    assert DeepCacheSettings(2, schedule="non-uniform").full_step_flags(25) == full_steps(25, 2, uniform=False)
    for bad, name in [
        (dict(interval=0), "cache_interval"),
        (dict(branch=-1), "cache_depth"),
        (dict(start_percent=0.6, end_percent=0.5), "start_percent"),
        (dict(end_percent=1.5), "end_percent"),
        (dict(schedule="linear"), "schedule"),
    ]:
        with pytest.raises(ValueError, match=name):
            DeepCacheSettings(**bad)
