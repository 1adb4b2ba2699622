"""ComfyUI's conditioning and custom-sampling nodes on the standalone host: ConditioningCombine,
ConditioningZeroOut, ConditioningSetTimestepRange (and the sampler honouring ranges and mixing
entries as ComfyUI's calc_cond_batch does), SDTurboScheduler, SamplerCustomAdvanced with
RandomNoise / DisableNoise / CFGGuider / BasicGuider (equal to SamplerCustom); inpainting with "ddim"
(ComfyUI's fresh noise from seed + 1 for the unmasked region) and one-step UniPC (no step taken)."""

from __future__ import annotations

import pytest
import torch

from lcm_accel.fixtures import shared_models_root
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as NODES
from lcm_accel.hosts.standalone.denoiser import GuidedDenoiser, percent_to_sigma, sigma_table
from lcm_accel.runtime.checkpoints import load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def sd15():
    model, clip, _ = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sd15.safetensors")
    encode = NODES["CLIPTextEncode"]().encode
    return model, encode(clip, "a photo of a cat")[0], encode(clip, "a red house")[0], encode(clip, "blurry")[0]


@pytest.fixture(scope="module")
def sdxl():
    model, clip, _ = load_checkpoint(shared_models_root() / "models" / "checkpoints" / "tiny_sdxl.safetensors")
    return model, NODES["CLIPTextEncode"]().encode(clip, "a cat")[0]


def _x(seed=0):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_combine_concatenates_and_zero_out_zeroes(sdxl):
    _, cond = sdxl
    other = [[torch.ones(1, 77, 2048), {"pooled_output": torch.ones(1, 1280), "strength": 0.5}]]
    (combined,) = NODES["ConditioningCombine"]().combine(cond, other)
    assert len(combined) == 2 and combined[0] is cond[0] and combined[1] is other[0]
    (zero,) = NODES["ConditioningZeroOut"]().zero_out(combined)
    for (tensor, options), (source_tensor, source_options) in zip(zero, combined):
        assert tensor.shape == source_tensor.shape and not tensor.any()
        assert not options["pooled_output"].any()
        assert options["pooled_output"].shape == source_options["pooled_output"].shape
        assert source_options["pooled_output"].any()  # the input is left as it was
    assert zero[1][1]["strength"] == 0.5
    with pytest.raises(TypeError, match="ConditioningCombine: conditioning_2"):
        NODES["ConditioningCombine"]().combine(cond, "text")


def test_set_timestep_range_records_percentages(sd15):
    _, cat, *_ = sd15
    (ranged,) = NODES["ConditioningSetTimestepRange"]().set_range(cat, 0.25, 0.75)
    assert ranged[0][1]["start_percent"] == 0.25 and ranged[0][1]["end_percent"] == 0.75
    assert "start_percent" not in cat[0][1]
    with pytest.raises(ValueError, match="ConditioningSetTimestepRange: end"):
        NODES["ConditioningSetTimestepRange"]().set_range(cat, 0.0, 1.5)


def test_percent_to_sigma_is_comfyuis_mapping(sd15):
    model = sd15[0]
    table = sigma_table(model)
    assert percent_to_sigma(table, 0.0) > float(table.sigma_max) and percent_to_sigma(table, 1.0) == 0.0
    # timestep (1 - p) * 999, log-linear between the table's entries
    t = 0.7 * 999.0
    low, high = int(t), int(t) + 1
    expected = torch.exp((1 - (t - low)) * table.log_sigmas[low] + (t - low) * table.log_sigmas[high])
    assert percent_to_sigma(table, 0.3) == pytest.approx(float(expected), rel=1e-6)


def test_the_denoiser_uses_each_entry_over_its_range_only(sd15):
    model, cat, house, _ = sd15
    set_range = NODES["ConditioningSetTimestepRange"]().set_range
    early = set_range(cat, 0.0, 0.5)[0]
    late = set_range(house, 0.5, 1.0)[0]
    (both,) = NODES["ConditioningCombine"]().combine(early, late)
    split = percent_to_sigma(sigma_table(model), 0.5)
    x = _x()
    for sigma, alone in ((split * 1.5, cat), (split / 1.5, house)):
        s = torch.tensor([sigma])
        got = GuidedDenoiser(model, both, both, 1.0)(x, s)
        torch.testing.assert_close(got, GuidedDenoiser(model, alone, alone, 1.0)(x, s), rtol=0, atol=0)
    # no entry active: ComfyUI's pass gives 0, so CFG pushes away from the negative alone
    only_late = late
    s = torch.tensor([split * 1.5])
    uncond = GuidedDenoiser(model, cat, cat, 1.0)(x, s)
    torch.testing.assert_close(GuidedDenoiser(model, only_late, cat, 3.0)(x, s), uncond * (1 - 3.0))


def test_combined_entries_average_by_strength(sd15):
    model, cat, house, _ = sd15
    weighted = [[house[0][0], {**house[0][1], "strength": 3.0}]]
    (both,) = NODES["ConditioningCombine"]().combine(cat, weighted)
    x, s = _x(1), torch.tensor([2.5])
    d_cat = GuidedDenoiser(model, cat, cat, 1.0)(x, s)
    d_house = GuidedDenoiser(model, house, house, 1.0)(x, s)
    torch.testing.assert_close(GuidedDenoiser(model, both, both, 1.0)(x, s), (d_cat + 3.0 * d_house) / 4.0)


def test_full_range_and_empty_range_change_nothing(sd15):
    model, cat, house, negative = sd15
    latent = NODES["EmptyLatentImage"]().generate(64, 64, 1)[0]
    sample = NODES["KSampler"]().sample
    plain = sample(model, 3, 3, 4.0, "euler", "normal", cat, negative, latent)[0]["samples"]
    (full,) = NODES["ConditioningSetTimestepRange"]().set_range(cat, 0.0, 1.0)
    assert torch.equal(sample(model, 3, 3, 4.0, "euler", "normal", full, negative, latent)[0]["samples"], plain)
    (never,) = NODES["ConditioningSetTimestepRange"]().set_range(house, 1.0, 1.0)
    (combined,) = NODES["ConditioningCombine"]().combine(cat, never)
    torch.testing.assert_close(
        sample(model, 3, 3, 4.0, "euler", "normal", combined, negative, latent)[0]["samples"], plain
    )


def test_sd_turbo_scheduler_picks_every_hundredth_timestep(sd15):
    model = sd15[0]
    table = sigma_table(model)
    (sigmas,) = NODES["SDTurboScheduler"]().get_sigmas(model, 4, 1.0)
    expected = table.sigma(torch.tensor([999, 899, 799, 699]))
    torch.testing.assert_close(sigmas, torch.cat([expected, torch.zeros(1)]))
    (img2img,) = NODES["SDTurboScheduler"]().get_sigmas(model, 2, 0.5)
    torch.testing.assert_close(img2img, torch.cat([table.sigma(torch.tensor([499, 399])), torch.zeros(1)]))
    (tail,) = NODES["SDTurboScheduler"]().get_sigmas(model, 10, 0.3)  # runs out at timestep 99
    assert len(tail) == 4 and float(tail[-1]) == 0.0
    assert NODES["SDTurboScheduler"]().get_sigmas(model, 1, 0.0)[0].tolist() == [0.0]


def test_sampler_custom_advanced_equals_sampler_custom(sd15):
    model, cat, _, negative = sd15
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4)), "batch_index": [3, 1]}
    (sigmas,) = NODES["BasicScheduler"]().get_sigmas(model, "karras", 3, 0.6)
    (sampler,) = NODES["KSamplerSelect"]().get_sampler("euler_ancestral")
    custom = NODES["SamplerCustom"]().sample
    advanced = NODES["SamplerCustomAdvanced"]().sample
    (noise,) = NODES["RandomNoise"]().get_noise(11)
    (guider,) = NODES["CFGGuider"]().get_guider(model, cat, negative, 5.0)
    ours = advanced(noise, guider, sampler, sigmas, latent)
    reference = custom(model, True, 11, 5.0, cat, negative, sampler, sigmas, latent)
    for got, want in zip(ours, reference):
        assert torch.equal(got["samples"], want["samples"]) and got["batch_index"] == [3, 1]
    (no_noise,) = NODES["DisableNoise"]().get_noise()
    (basic,) = NODES["BasicGuider"]().get_guider(model, cat)
    ours = advanced(no_noise, basic, sampler, sigmas, latent)[0]["samples"]
    # DisableNoise carries seed 0 (the ancestral noise's seed), BasicGuider is cfg 1 without a negative
    assert torch.equal(ours, custom(model, False, 0, 1.0, cat, negative, sampler, sigmas, latent)[0]["samples"])


def test_sampler_custom_advanced_refuses_wrong_inputs(sd15):
    model, cat, _, _ = sd15
    (guider,) = NODES["BasicGuider"]().get_guider(model, cat)
    (sampler,) = NODES["KSamplerSelect"]().get_sampler("euler")
    latent = NODES["EmptyLatentImage"]().generate(64, 64, 1)[0]
    with pytest.raises(TypeError, match="SamplerCustomAdvanced: noise must come from RandomNoise"):
        NODES["SamplerCustomAdvanced"]().sample(7, guider, sampler, torch.tensor([1.0, 0.0]), latent)
    with pytest.raises(TypeError, match="SamplerCustomAdvanced: guider"):
        NODES["SamplerCustomAdvanced"]().sample(NODES["DisableNoise"]().get_noise()[0], cat, sampler, None, latent)


def test_ddim_inpainting_keeps_the_unmasked_region_on_noise_from_seed_plus_one(sd15, monkeypatch):
    from lcm_accel.hosts.standalone import sampling_pipeline
    from lcm_accel.hosts.standalone.sampler_values import KDiffusionSampler

    model, cat, _, blurry = sd15
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0
    plain = {"samples": _x(3)}
    (masked,) = NODES["SetLatentNoiseMask"]().set_mask(plain, mask)
    ks = NODES["KSampler"]().sample

    def run(sampler, latent, seed=5):
        return ks(model, seed, 3, 4.0, sampler, "normal", cat, blurry, latent)[0]["samples"]

    # ddim is euler: the same without a mask, another result with one
    assert torch.equal(run("ddim", plain), run("euler", plain))
    ddim, euler = run("ddim", masked), run("euler", masked)
    assert (ddim - euler).abs().max() > 1e-3
    # euler whose kept-region noise is drawn from seed + 1 is ddim
    fresh = torch.randn(plain["samples"].shape, generator=torch.manual_seed(6))
    monkeypatch.setattr(sampling_pipeline, "inpaint_noise", lambda sampler, noise, seed: fresh.to(noise))
    torch.testing.assert_close(run("euler", masked), ddim, rtol=0, atol=0)
    monkeypatch.undo()
    noise = torch.zeros(1, 4, 8, 8)
    assert sampling_pipeline.inpaint_noise(KDiffusionSampler("euler"), noise, 5) is noise
    assert torch.equal(sampling_pipeline.inpaint_noise(KDiffusionSampler("ddim"), noise, 5), fresh)
    with pytest.raises(ValueError, match="seed 18446744073709551615: the 'ddim' sampler"):
        run("ddim", masked, seed=2**64 - 1)


def test_one_step_uni_pc_takes_no_step(sd15):
    model, cat, _, blurry = sd15
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    for name in ("uni_pc", "uni_pc_bh2"):
        out = NODES["KSampler"]().sample(model, 7, 1, 3.0, name, "karras", cat, blurry, latent)[0]["samples"]
        noise = torch.randn(1, 4, 8, 8, generator=torch.manual_seed(7))
        # noise * sqrt(1 + sigma_max^2) scaled into the VP view and back out at sigma 0.001
        scale = 0.18215
        torch.testing.assert_close(out * scale, noise * (1 + 0.001**2) ** 0.5, rtol=1e-5, atol=1e-6)
