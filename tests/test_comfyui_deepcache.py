"""DeepCache in the ComfyUI host, in-process in real ComfyUI (skipped unless COMFYUI_PATH names a checkout).

A small SD1.5-detectable UNet is loaded by ComfyUI's UNETLoader; the checks run in ComfyUI's
interpreter (tests/comfyui_deepcache_checks.py) through the real nodes and are asserted here:
- the LDM blocks skipped for each cache_depth are exactly the layers feature_cache.deepcache skips
  on the diffusers twin of the same UNet (parameter names mapped diffusers -> LDM);
- full and partial UNet calls give the outputs of the standalone host's DeepCache (diffusers UNet);
- a partial call on its full call's input reproduces it, despite in-place ControlNet / FreeU-style changes;
- interval 1 is bit-identical to the uncached model (KSampler euler cfg 3, heun, LCMKSampler), and
  a chain of DeepCache nodes keeps only the last one;
- interval 3 caches (as many partial calls as the schedule says, latents change) and stays close;
- every sampler runs with DeepCache (ComfyUI's and ours through SamplerCustom);
- nothing leaks across runs, sizes and batch sizes, and the input MODEL stays untouched;
- ComfyUI's interrupt inside a partial call stops the run and puts the original blocks back;
- a cache_depth too deep for the UNet, or a model that is not a UNet, is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfyui_server import comfyui_checkout, run_checks

CHECKOUT, WHY = comfyui_checkout()
pytestmark = pytest.mark.skipif(CHECKOUT is None, reason=WHY)
REPO = Path(__file__).resolve().parent.parent
PARITY_TIMESTEPS = [999.0, 749.0, 499.0, 249.0]
PARITY_BRANCHES = (0, 3)  # deep feature from an output block, and from the middle block
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2s_ancestral", "lcm", "LCMAccel_Sampler"]


def diffusers_skips(unet, layers_per_block: int) -> dict[str, list[str]]:
    """For each cache branch of `unet`: the LDM names of the parameters DeepCache skips on it."""
    from lcm_accel.feature_cache.deepcache import skipped_modules
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm

    names = list(unet.state_dict())
    ldm_of = {diffusers: ldm for ldm, diffusers in unet_to_ldm({n: n for n in names}, layers_per_block).items()}
    branches = len(unet.up_blocks) * len(unet.up_blocks[0].resnets)
    out = {}
    for branch in range(branches):
        prefixes = tuple(m + "." for m in skipped_modules(unet, branch))
        out[str(branch)] = sorted(ldm_of[n] for n in names if n.startswith(prefixes))
    return out


def deepcache_reference(unet, path: Path) -> None:
    """Inputs and the standalone host's DeepCache outputs (diffusers UNet) for a few UNet calls."""
    import torch
    from safetensors.torch import save_file

    from lcm_accel.feature_cache.deepcache import DeepCacheUNet
    from lcm_accel.feature_cache.settings import DeepCacheSettings

    g = torch.Generator().manual_seed(1)
    tensors = {"context": torch.randn(1, 77, 768, generator=g), "timesteps": torch.tensor(PARITY_TIMESTEPS)}
    for k in range(len(PARITY_TIMESTEPS)):
        tensors[f"x{k}"] = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        for branch in PARITY_BRANCHES:
            flags = DeepCacheSettings(3, branch).full_step_flags(len(PARITY_TIMESTEPS))
            tensors[f"flags{branch}"] = torch.tensor(flags)
            with DeepCacheUNet(unet, branch, flags) as cached:
                for k, t in enumerate(PARITY_TIMESTEPS):
                    out = cached(tensors[f"x{k}"], t, encoder_hidden_states=tensors["context"]).sample
                    tensors[f"out{branch}_{k}"] = out.contiguous()
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    import torch
    from safetensors.torch import save_file

    from lcm_accel.fixtures.comfyui_models import sd15_unet
    from lcm_accel.fixtures.ldm_keys import unet_to_ldm

    base = tmp_path_factory.mktemp("comfyui_deepcache")
    torch.manual_seed(0)
    unet = sd15_unet().eval()
    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in unet_to_ldm(unet.state_dict(), 1).items()}
    save_file(state, str(models / "unet.safetensors"))
    (base / "diffusers_skips.json").write_text(json.dumps(diffusers_skips(unet, 1)))
    deepcache_reference(unet, base / "deepcache_reference.safetensors")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-lcm-accel").symlink_to(REPO)
    return run_checks(CHECKOUT, REPO / "tests" / "comfyui_deepcache_checks.py", base)


def test_skipped_blocks_are_the_layers_deepcache_skips_in_diffusers(checks):
    m = checks["mapping"]
    print("mapping:", m)
    assert (m["levels"], m["layers"]) == (2, 2) and sorted(m["branches"]) == ["0", "1", "2", "3"]
    for branch, b in m["branches"].items():
        assert b["same_keys"], f"branch {branch}: only ours {b['only_ours']}, only diffusers {b['only_diffusers']}"
        assert "middle0" in b["skipped"] and 0 < b["params"] < m["total_params"]
    counts = [m["branches"][b]["params"] for b in ("0", "1", "2", "3")]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4  # deeper branch, less skipped


def test_unet_calls_match_the_standalone_deepcache(checks):
    p = checks["parity"]
    print("parity with feature_cache.deepcache (diffusers):", p)
    assert sorted(p) == [str(b) for b in PARITY_BRANCHES]
    for branch, r in p.items():
        assert r["stats"]["partial"] == 2 and r["stats"]["forced_full"] == 0, branch
        assert r["full_max_diff"] <= 1e-4 * max(1.0, r["scale"]), branch
        assert r["partial_max_diff"] <= 1e-4 * max(1.0, r["scale"]), branch


def test_reused_features_are_not_changed_by_in_place_patches(checks):
    r = checks["reuse"]
    print("partial call on the full call's input:", r)
    for branch, item in r.items():
        assert item["stats"] == {"full": 1, "partial": 1, "forced_full": 0}, branch
        assert item["partial_vs_full"] <= 1e-6 * max(1.0, item["scale"]), branch


def test_interval_1_is_bit_identical(checks):
    one = checks["interval_1"]
    print("interval 1:", one)
    assert one["euler_cfg3"] == one["heun"] == one["lcmksampler"] == 0.0
    assert one["chained"] == 0.0 and one["wrappers"] == 1


def test_interval_3_caches_and_stays_close(checks):
    from lcm_accel.feature_cache.settings import DeepCacheSettings

    c = checks["interval_3"]
    print("interval 3:", c)
    flags = DeepCacheSettings(3, 0).full_step_flags(c["steps"])
    # cond and uncond run batched (one stream): one call per step
    assert c["stats"] == [
        {"full": flags.count(True), "partial": flags.count(False), "forced_full": 0, "steps": c["steps"]}
    ]
    assert c["finite"] and c["max_diff"] > 0
    assert c["rmse"] < 0.25 * c["plain_std"]
    # replayed blocks advance ComfyUI's transformer counter as the real ones do (GLIGEN reads it)
    assert c["transformer_index_cached"] == c["transformer_index_plain"] and len(c["transformer_index_plain"]) >= 3


def test_every_sampler_runs_cached(checks):
    s = checks["samplers"]
    print("samplers:", json.dumps(s["results"]))
    assert sorted(s["results"]) == sorted(SAMPLERS)
    for name, r in s["results"].items():
        assert r["finite"], name
        assert len(r["stats"]) == 1 and r["stats"][0]["partial"] > 0, f"{name}: {r['stats']}"
    assert s["blocks_original"]


def test_no_leak_across_runs_sizes_and_batches(checks):
    n = checks["no_leak"]
    print("no leak:", n)
    assert n["a_repeat"] == 0.0
    assert n["b_shape"] == [2, 4, 20, 24] and n["b_finite"]
    assert [r["steps"] for r in n["stats"]] == [4, 5, 4] and n["stats"][0] == n["stats"][2]
    assert all(r["partial"] > 0 and r["forced_full"] == 0 for r in n["stats"])  # each run starts fresh
    assert n["blocks_original"] and n["input_model_vs_untouched"] == 0.0 and n["input_wrappers"] == 0


def test_interrupt_inside_a_partial_call_restores_the_blocks(checks):
    i = checks["interrupt"]
    print("interrupt:", i)
    assert i["raised"] == "InterruptProcessingException" and i["calls"] == 3
    assert i["shims_in_place_when_stopped"] == [True]
    assert i["blocks_original"] and i["rerun_vs_before"] == 0.0


def test_bad_models_and_depths_are_refused(checks):
    e = checks["errors"]
    assert e["too_deep"] and "cache_depth 4" in e["too_deep"] and "0..3" in e["too_deep"]
    assert e["not_unet"] and "Linear" in e["not_unet"] and "UNetModel" in e["not_unet"]
