"""lcm_scheduler's schedules, tables, sigma view and guidance embedding against diffusers."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import LCMScheduler, TCDScheduler
from diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_text2img import (
    LatentConsistencyModelPipeline,
)

from lcm_accel.lcm_scheduler import (
    default_train_sigmas,
    guidance_scale_embedding,
    lcm_guidance_embedding,
    lcm_sigmas,
    lcm_timesteps,
    make_alphas_cumprod,
    sigmas_from_alphas_cumprod,
    tcd_sigmas,
    tcd_timesteps,
    timestep_from_sigma,
    ve_from_vp,
    vp_from_ve,
)

STEPS = range(1, 9)
ORIGINAL_STEPS = (50, 100)
STRENGTHS = (0.3, 0.6, 1.0)


def _reference_or_error(scheduler, **kwargs):
    """diffusers' timesteps, or the ValueError it raises."""
    try:
        scheduler.set_timesteps(**kwargs)
    except ValueError as error:
        return error
    return scheduler.timesteps.clone()


def _assert_same_outcome(reference, ours_fn):
    if isinstance(reference, ValueError):
        with pytest.raises(ValueError):
            ours_fn()
    else:
        ours = ours_fn()
        assert ours.dtype == torch.int64
        assert torch.equal(ours, reference)


@pytest.mark.parametrize("original", ORIGINAL_STEPS)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_lcm_timesteps_match_diffusers(original, strength):
    for steps in STEPS:
        reference = _reference_or_error(
            LCMScheduler(), num_inference_steps=steps, original_inference_steps=original, strength=strength
        )
        _assert_same_outcome(reference, lambda: lcm_timesteps(steps, original, strength))


@pytest.mark.parametrize("original", ORIGINAL_STEPS)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_tcd_timesteps_match_diffusers_both_paths(original, strength):
    for steps in STEPS:
        from_config = _reference_or_error(
            TCDScheduler(original_inference_steps=original), num_inference_steps=steps, strength=strength
        )
        _assert_same_outcome(from_config, lambda: tcd_timesteps(steps, original, strength))
        explicit = _reference_or_error(
            TCDScheduler(), num_inference_steps=steps, original_inference_steps=original, strength=strength
        )
        _assert_same_outcome(explicit, lambda: tcd_timesteps(steps, original, strength, full_train_grid=True))


def test_more_steps_and_other_train_lengths_match_diffusers():
    for train, original, steps, strength in [
        (1000, 50, 50, 1.0),
        (1000, 50, 13, 0.7),
        (500, 25, 6, 0.5),
        (1000, 1000, 37, 1.0),
        (1000, 30, 7, 1.0),
    ]:
        reference = LCMScheduler(num_train_timesteps=train)
        reference.set_timesteps(steps, original_inference_steps=original, strength=strength)
        assert torch.equal(lcm_timesteps(steps, original, strength, train), reference.timesteps)


@pytest.mark.parametrize("custom", [[999, 759, 499, 259], [899, 500, 20], [999], [639, 319, 0]])
@pytest.mark.parametrize("strength", [1.0, 0.6, 0.3])
def test_custom_timesteps_match_diffusers(custom, strength):
    grid = {20 * i - 1 for i in range(1, int(50 * strength) + 1)}
    expect_warning = any(t not in grid for t in custom[1:])
    for scheduler_cls, ours in [(LCMScheduler, lcm_timesteps), (TCDScheduler, tcd_timesteps)]:
        reference = scheduler_cls()
        reference.set_timesteps(timesteps=custom, strength=strength)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if len(reference.timesteps) == 0:  # diffusers returns an empty schedule; we refuse it
                with pytest.raises(ValueError, match="strength"):
                    ours(None, timesteps=custom, strength=strength)
            else:
                assert torch.equal(ours(None, timesteps=torch.tensor(custom), strength=strength), reference.timesteps)
        assert any("distillation grid" in str(w.message) for w in caught) == expect_warning


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=51), "num_inference_steps"),
        (dict(num_inference_steps=20, strength=0.3), "num_inference_steps"),
        (dict(num_inference_steps=4, strength=0.0), "strength"),
        (dict(num_inference_steps=4, strength=1.5), "strength"),
        (dict(num_inference_steps=4, strength=-0.2), "strength"),
        (dict(num_inference_steps=4, original_inference_steps=0), "original_inference_steps"),
        (dict(num_inference_steps=4, original_inference_steps=2000), "original_inference_steps"),
        (dict(num_inference_steps=None, timesteps=[999, 999, 500]), "timesteps"),
        (dict(num_inference_steps=None, timesteps=[500, 999]), "timesteps"),
        (dict(num_inference_steps=None, timesteps=[1000, 500]), "timesteps"),
        (dict(num_inference_steps=None, timesteps=[999, 500, -1]), "timesteps"),
        (dict(num_inference_steps=None, timesteps=[999, 500.5]), "timesteps"),
        (dict(num_inference_steps=None, timesteps=[]), "timesteps"),
        (dict(num_inference_steps=4, timesteps=[999, 500]), "timesteps"),
        (dict(num_inference_steps=None), "timesteps"),
    ],
)
def test_bad_schedule_arguments_name_the_argument(kwargs, argument):
    for ours in (lcm_timesteps, tcd_timesteps):
        with pytest.raises(ValueError, match=f"`?{argument}`?"):
            ours(**kwargs)


@pytest.mark.parametrize("schedule, start, end", [("scaled_linear", 0.00085, 0.012), ("linear", 0.0001, 0.02)])
def test_alphas_cumprod_match_diffusers(schedule, start, end):
    reference = LCMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end).alphas_cumprod
    assert torch.equal(make_alphas_cumprod(schedule, start, end), reference)
    with pytest.raises(ValueError, match="beta_schedule"):
        make_alphas_cumprod("cosine")


def test_sigma_lookup_is_exact_on_the_table_and_nearest_in_log_sigma():
    table = default_train_sigmas()
    assert torch.equal(timestep_from_sigma(table, table), torch.arange(1000))
    between = (table[:-1].log() * 0.3 + table[1:].log() * 0.7).exp()  # nearer the upper neighbour
    assert torch.equal(timestep_from_sigma(between, table), torch.arange(1, 1000))
    with pytest.raises(ValueError, match="sigma"):
        timestep_from_sigma(torch.tensor(0.0), table)


def test_vp_ve_views_are_consistent_with_alphas_cumprod():
    acp = make_alphas_cumprod()
    sigmas = sigmas_from_alphas_cumprod(acp)
    x = torch.randn(2, 4, 8, 8)
    for t in (0, 259, 999):
        torch.testing.assert_close(ve_from_vp(x, sigmas[t]), x / acp[t].sqrt(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(vp_from_ve(ve_from_vp(x, sigmas[t]), sigmas[t]), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("strength", STRENGTHS)
def test_lcm_and_tcd_sigmas_are_the_timesteps_on_the_table_then_zero(strength):
    table = default_train_sigmas()
    for steps in (1, 4, 8):
        for sigmas, timesteps in [
            (lcm_sigmas(steps, 50, strength), lcm_timesteps(steps, 50, strength)),
            (
                tcd_sigmas(steps, 50, strength, full_train_grid=True),
                tcd_timesteps(steps, 50, strength, full_train_grid=True),
            ),
        ]:
            assert sigmas[-1] == 0 and len(sigmas) == steps + 1
            assert torch.equal(sigmas[:-1], table[timesteps])
            assert torch.equal(timestep_from_sigma(sigmas[:-1], table), timesteps)


@pytest.mark.parametrize("dim", [256, 16, 7])
def test_guidance_embedding_matches_the_pipeline(dim):
    w = torch.tensor([0.0, 1.5, 7.0])
    reference = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    assert torch.equal(guidance_scale_embedding(w, dim), reference)
    for guidance_scale in (1.0, 2.5, 8):
        expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, torch.tensor(guidance_scale - 1).repeat(3), embedding_dim=dim
        )
        assert torch.equal(lcm_guidance_embedding(guidance_scale, 3, dim), expected)
