"""Fast mode (issue 9): the shape-keyed capture cache, the one-time fallback message, the planned
LCM / TCD loop against the eager sampler, the LCMFastMode node and `run --fast`, and LoRA apply /
re-weight / restore keeping every patched parameter's storage. CPU tests use a recording backend
(replays eagerly from the static buffers) where a capture is needed; CUDA tests skip without CUDA."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcm_accel.fixtures.demo_models import write_demo_models_dir
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import default_registry
from lcm_accel.hosts.standalone import NODE_CLASS_MAPPINGS as CORE
from lcm_accel.hosts.standalone.host import STANDALONE_HOST
from lcm_accel.hosts.standalone.sampling_pipeline import lcm_ksample
from lcm_accel.nodes import PACK_NODES as PACK
from lcm_accel.runtime import fast_mode
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.fast_mode import FastModeSettings, fast_or_eager, with_fast_mode
from lcm_accel.runtime.graph_cache import drop_graph_caches, graph_cache
from lcm_accel.runtime.lora_state import activate_patches, add_loras, load_lora_file
from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths
from lcm_accel.runtime.model_types import ClipHost, ModelHost, VaeHost
from lcm_accel.runtime.vae_codec import decode

ROOT = Path(__file__).resolve().parent.parent
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LOGGER = "lcm_accel.fast_mode"


class RecordingBackend:
    """A capture backend for CPU tests: 'capture' records the static buffers, a replay runs the
    callable eagerly on them (so the cache's copy-in / clone-out bookkeeping is exercised)."""

    name = "recording"

    def __init__(self):
        self.captured = []

    def unsupported(self, device):
        return None

    def capture(self, fn, static_inputs):
        self.captured.append(static_inputs)
        return lambda: fn(*static_inputs)


@pytest.fixture
def recording(monkeypatch):
    backend = RecordingBackend()
    monkeypatch.setitem(fast_mode.BACKENDS, "recording", backend)
    return backend


@pytest.fixture(autouse=True)
def fresh_messages():
    fast_mode.forget_messages()
    yield
    fast_mode.forget_messages()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_models_dir(tmp_path_factory.mktemp("fast_models"))


@pytest.fixture(scope="module")
def sd15(demo_root):
    """Private copies of the tiny SD1.5 modules (tests may patch them) with encoded prompts."""
    model, clip, vae = load_checkpoint(demo_root / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    model = ModelHost(copy.deepcopy(model.unet), "sd15")
    clip = ClipHost(clip.tokenizer, [copy.deepcopy(e) for e in clip.text_encoders], "sd15")
    vae = VaeHost(copy.deepcopy(vae.vae), vae.scaling_factor)
    encode = CORE["CLIPTextEncode"]().encode
    return model, clip, vae, encode(clip, "a cat on a mat")[0], encode(clip, "blurry")[0]


def _latent(size: int = 64, batch: int = 1) -> dict:
    return CORE["EmptyLatentImage"]().generate(size, size, batch)[0]


def _loras(demo_root):
    with use_model_paths(ModelPaths(demo_root / "models")):
        return load_lora_file("lcm-lora-sdv1-5.safetensors"), load_lora_file("style-lora-sd15.safetensors")


# --------------------------------------------------------------------------- the cache
def test_cache_captures_per_key_and_replays_with_new_inputs(recording):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    settings = FastModeSettings(True, "recording")

    def run(x):
        return fast_or_eager(settings, "conv", conv, lambda t: (conv(t),), (x,))[0]

    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    cache = graph_cache(conv, recording)
    with torch.no_grad():
        assert torch.equal(run(a), conv(a)) and (cache.captures, cache.replays) == (1, 0)
        out_b = run(b)  # same key: the new values are copied into the captured buffers
        assert torch.equal(out_b, conv(b)) and (cache.captures, cache.replays) == (1, 1)
        assert torch.equal(recording.captured[0][0], b)
        run(torch.randn(2, 4, 8, 8))  # another batch
        run(torch.randn(1, 4, 16, 8))  # another height
        run(torch.randn(1, 4, 8, 8, dtype=torch.float64).float())  # same key again
        assert (cache.captures, cache.replays) == (3, 2)
        keys = list(cache.entries)
        assert [(k.batch, k.height, k.width) for k in keys] == [(1, 8, 8), (2, 8, 8), (1, 16, 8)]
        assert all(k.name == "conv" and k.dtype == "torch.float32" and k.device == "cpu" for k in keys)
        first = run(a)
        run(b)
        assert torch.equal(first, conv(a)), "outputs must be clones, not the replay's buffers"

        conv.to(torch.float64)  # new storage: every capture is stale and dropped, a new dtype key follows
        out = run(a.double())
        assert torch.equal(out, conv(a.double()))
        assert cache.captures == 4 and [k.dtype for k in cache.entries] == ["torch.float64"]


def test_failed_capture_runs_eager_and_says_why_once(monkeypatch, caplog):
    class Refusing(RecordingBackend):
        name = "refusing"

        def capture(self, fn, static_inputs):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setitem(fast_mode.BACKENDS, "refusing", Refusing())
    linear = torch.nn.Linear(3, 3)
    settings = FastModeSettings(True, "refusing")
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger=LOGGER), torch.no_grad():
        for _ in range(3):
            assert torch.equal(fast_or_eager(settings, "linear", linear, lambda t: (linear(t),), (x,))[0], linear(x))
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(said) == 1 and "capturing linear failed" in said[0] and "not permitted" in said[0]


def test_settings_refuse_an_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        FastModeSettings(True, "tensorrt")


# --------------------------------------------------------------------------- CPU: fallback, same images
def test_cpu_falls_back_once_with_the_same_images(sd15, caplog):
    model, clip, vae, positive, negative = sd15
    eager = lcm_ksample(model, 7, 3, 1.0, positive, negative, _latent())["samples"]
    fast_model = with_fast_mode(model, FastModeSettings())
    fast_vae = with_fast_mode(vae, FastModeSettings())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            out = lcm_ksample(fast_model, 7, 3, 1.0, positive, negative, _latent())["samples"]
            assert torch.equal(out, eager)
            assert torch.equal(decode(fast_vae, out), decode(vae, eager))
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(said) == 1, said  # one reason (no CUDA device), said once for sampling and decoding alike
    assert "CUDA graphs need a CUDA device" in said[0] and "on cpu" in said[0] and "running eager" in said[0]


def test_deepcache_and_other_samplers_say_why_they_run_eager(sd15, recording, caplog):
    from lcm_accel.feature_cache import DeepCacheSettings
    from lcm_accel.hosts.standalone.sampling_pipeline import common_ksampler

    model, _, _, positive, negative = sd15
    settings = FastModeSettings(True, "recording")
    cached = STANDALONE_HOST.deepcache(model, DeepCacheSettings(2, 0, 0.0, 1.0, "uniform"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        lcm_ksample(with_fast_mode(cached, settings), 7, 2, 1.0, positive, negative, _latent())
        common_ksampler(with_fast_mode(model, settings), 7, 2, 1.0, "euler", "normal", positive, negative, _latent())
    said = " | ".join(r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert "DeepCache is on" in said and "sampler 'euler' runs eager" in said
    assert recording.captured == [], "both runs must be eager"


# --------------------------------------------------------------------------- the planned loop (CPU, recording)
@pytest.mark.parametrize(
    "cfg, gamma, steps, batch", [(1.0, 0.0, 4, 1), (1.5, 0.0, 3, 2), (1.0, 0.3, 4, 1), (1.0, 0.0, 1, 1)]
)
def test_planned_loop_equals_the_eager_sampler(sd15, recording, cfg, gamma, steps, batch):
    model, _, _, positive, negative = sd15
    latent = _latent(64, batch)
    eager = lcm_ksample(model, 11, steps, cfg, positive, negative, latent, gamma=gamma)["samples"]
    fast_model = with_fast_mode(model, FastModeSettings(True, "recording"))
    drop_graph_caches(model.unet)
    fast = lcm_ksample(fast_model, 11, steps, cfg, positive, negative, latent, gamma=gamma)["samples"]
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)  # float32 rounding of the folded coefficients
    cache = graph_cache(model.unet, recording)
    passes = steps * (1 if cfg == 1.0 else 2)
    assert (cache.captures, cache.replays) == (1, passes - 1)


def test_planned_loop_with_custom_sampler_and_inpainting(sd15, recording):
    model, _, _, positive, negative = sd15
    sampler_custom = CORE["SamplerCustom"]()
    fast_model = with_fast_mode(model, FastModeSettings(True, "recording"))
    sigmas = PACK["LCMAccel_Scheduler"]().get_sigmas(model, 3, 50, 1.0)[0]
    sampler = PACK["LCMAccel_Sampler"]().get_sampler(0.0)[0]
    latent = {**_latent(), "samples": torch.randn(1, 4, 8, 8), "noise_mask": torch.zeros(1, 64, 64)}
    latent["noise_mask"][:, :32] = 1.0
    outs = [
        sampler_custom.sample(m, True, 5, 1.0, positive, negative, sampler, sigmas, latent) for m in (model, fast_model)
    ]
    for eager, fast in zip(*outs):
        torch.testing.assert_close(fast["samples"], eager["samples"], rtol=1e-5, atol=1e-5)


def test_text_encode_and_vae_decode_replay_their_captures(sd15, recording):
    _, clip, vae, _, _ = sd15
    settings = FastModeSettings(True, "recording")
    encode = CORE["CLIPTextEncode"]().encode
    fast_clip, fast_vae = with_fast_mode(clip, settings), with_fast_mode(vae, settings)
    for text in ("a red (fox:1.3)", "a boat"):
        eager, fast = encode(clip, text)[0][0], encode(fast_clip, text)[0][0]
        torch.testing.assert_close(fast[0], eager[0], rtol=0, atol=0)
        torch.testing.assert_close(fast[1]["pooled_output"], eager[1]["pooled_output"], rtol=0, atol=0)
    text_cache = graph_cache(clip.text_encoders[0], recording)
    assert (text_cache.captures, text_cache.replays) == (2, 0)  # (2 rows: weighted + empty) and (1 row)
    latents = torch.randn(1, 4, 8, 8)
    for _ in range(2):
        torch.testing.assert_close(decode(fast_vae, latents), decode(vae, latents), rtol=0, atol=0)
    vae_cache = graph_cache(vae.vae, recording)
    assert (vae_cache.captures, vae_cache.replays) == (1, 1)


# --------------------------------------------------------------------------- node, workflow, CLI
def _prompt(fast: dict | None) -> dict:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {
            "class_type": "LCMAccel_LoraLoader",
            "inputs": {"model": ["1", 0], "lora_name": "lcm-lora-sdv1-5.safetensors", "strength": 1.0},
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    model, clip, vae = ["2", 0], ["1", 1], ["1", 2]
    if fast is not None:
        prompt["9"] = {"class_type": "LCMAccel_FastMode", "inputs": {"model": model, "clip": clip, "vae": vae, **fast}}
        model, clip, vae = ["9", 0], ["9", 1], ["9", 2]
    prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a lake"}}
    prompt["4"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "blurry"}}
    prompt["6"] = {
        "class_type": "LCMAccel_KSampler",
        "inputs": {
            "model": model,
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": ["5", 0],
            "seed": 3,
            "steps": 2,
            "cfg": 1.0,
            "original_inference_steps": 50,
            "gamma": 0.0,
            "denoise": 1.0,
        },
    }
    prompt["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": vae}}
    return prompt


def test_node_in_a_workflow_gives_the_eager_image_on_cpu(demo_root, tmp_path, caplog):
    executor = Executor(default_registry(), ModelPaths(demo_root / "models", output_dir=tmp_path))
    eager = executor.run(_prompt(None)).output("7")[0]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = executor.run(_prompt({"enable": True, "backend": "cuda_graph"}))
    assert torch.equal(result.output("7")[0], eager)
    fast_model = result.output("9")[0]
    assert fast_model.model_options["fast_mode"] == FastModeSettings(True, "cuda_graph")
    assert result.output("9", 1)[0].fast == FastModeSettings(True, "cuda_graph")
    assert any("CUDA graphs need a CUDA device" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    off = executor.run(_prompt({"enable": False, "backend": "torch_compile"}))
    assert torch.equal(off.output("7")[0], eager)
    with pytest.raises(ValueError, match="LCMAccel_FastMode: backend"):
        PACK["LCMAccel_FastMode"]().apply(fast_model, True, "tensorrt")


def test_run_fast_flag_turns_fast_mode_on_and_keeps_the_image(demo_root, tmp_path, caplog):
    from lcm_accel.cli import main

    workflow = ROOT / "example_workflows" / "lcm_lora_txt2img.json"
    common = [
        "run",
        str(workflow),
        "--models",
        str(demo_root / "models"),
        "--device",
        "cpu",
        "--set",
        "5.width=64",
        "--set",
        "5.height=64",
        "--set",
        "6.steps=2",
    ]
    images = []
    for name, extra in (("eager", []), ("fast", ["--fast"])):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert main(common + ["--out", str(tmp_path / name)] + extra) == 0
        said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert said == (
            [
                "fast mode (cuda_graph): CUDA graphs need a CUDA device, the weights are on cpu; running "
                "eager (same images)"
            ]
            if extra
            else []
        )
        images.append(np.asarray(Image.open(next((tmp_path / name).glob("*.png")))))
        fast_mode.forget_messages()
    assert np.array_equal(images[0], images[1])


def test_fast_flag_is_the_default_for_models_without_their_own_setting(sd15):
    model, clip, vae, _, _ = sd15
    on, off = FastModeSettings(True, "torch_compile"), FastModeSettings(False)
    assert fast_mode.settings_of(model) is None
    with fast_mode.fast_mode_default(on):
        assert fast_mode.settings_of(model) == on and fast_mode.settings_of(clip) == on
        assert fast_mode.settings_of(vae) == on
        assert fast_mode.settings_of(with_fast_mode(model, off)) is None  # the node's choice wins
    assert fast_mode.settings_of(model) is None


# --------------------------------------------------------------------------- LoRA storage
def test_lora_apply_reweight_restore_keep_every_parameter_storage(sd15, demo_root):
    model, _, _, _, _ = sd15
    unet = model.unet
    activate_patches(model)
    params = dict(unet.named_parameters())
    before = {name: (p, p.data_ptr(), p.detach().clone()) for name, p in params.items()}
    lcm, style = _loras(demo_root)
    patched = set()
    for weights in ((1.0, 0.8), (0.9, 0.5), (0.3, -0.2)):  # apply, then two re-weights
        activate_patches(add_loras(model, [(lcm, weights[0]), (style, weights[1])]))
        changed = {n for n, p in unet.named_parameters() if not torch.equal(p.detach(), before[n][2])}
        assert changed, "the LoRAs must patch something"
        patched |= changed
        assert all(p is before[n][0] and p.data_ptr() == before[n][1] for n, p in unet.named_parameters())
    activate_patches(model)  # restore
    assert len(patched) > 50
    for name, p in unet.named_parameters():
        param, ptr, value = before[name]
        assert p is param and p.data_ptr() == ptr
        assert torch.equal(p.detach().view(torch.uint8), value.view(torch.uint8)), name


# --------------------------------------------------------------------------- CUDA only
def _cuda_copy(sd15, dtype=torch.float16):
    model, clip, vae, positive, negative = sd15
    unet = copy.deepcopy(model.unet)
    unet.__dict__.pop("_lcm_accel_graph_caches", None)
    return ModelHost(unet.to("cuda", dtype), "sd15"), positive, negative


@CUDA
@pytest.mark.parametrize("backend", ["cuda_graph", "torch_compile"])
def test_cuda_fast_path_matches_eager_in_fp16(sd15, backend):
    model, positive, negative = _cuda_copy(sd15)
    for cfg in (1.0, 1.5):
        eager = lcm_ksample(model, 5, 4, cfg, positive, negative, _latent())["samples"]
        fast = lcm_ksample(
            with_fast_mode(model, FastModeSettings(True, backend)), 5, 4, cfg, positive, negative, _latent()
        )["samples"]
        torch.testing.assert_close(fast, eager, rtol=2e-2, atol=2e-2)
    cache = graph_cache(model.unet, fast_mode.BACKENDS[backend])
    assert (cache.captures, cache.replays) == (1, 3 + 8)  # one batch-1 key: 4 passes at cfg 1, 2 x 4 at cfg 1.5


@CUDA
def test_cuda_graph_captured_before_a_reweight_replays_the_reweighted_model(sd15, demo_root):
    model, positive, negative = _cuda_copy(sd15)
    lcm, style = _loras(demo_root)
    fast = with_fast_mode(model, FastModeSettings(True, "cuda_graph"))
    first = add_loras(fast, [(lcm, 1.0), (style, 0.8)])
    lcm_ksample(first, 5, 4, 1.0, positive, negative, _latent())
    cache = graph_cache(model.unet, fast_mode.BACKENDS["cuda_graph"])
    captures = cache.captures
    reweighted = add_loras(fast, [(lcm, 0.5), (style, -0.4)])
    fast_out = lcm_ksample(reweighted, 5, 4, 1.0, positive, negative, _latent())["samples"]
    assert cache.captures == captures, "a re-weight must not need a new capture"
    eager_model = reweighted.clone()
    eager_model.model_options.pop("fast_mode")
    eager_out = lcm_ksample(eager_model, 5, 4, 1.0, positive, negative, _latent())["samples"]
    torch.testing.assert_close(fast_out, eager_out, rtol=2e-2, atol=2e-2)
    first_out = lcm_ksample(first, 5, 4, 1.0, positive, negative, _latent())["samples"]
    assert (first_out - fast_out).abs().max() > 10 * (fast_out - eager_out).abs().max(), (
        "the re-weight must change the image more than fast vs eager differ"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_benchmark_exits_with_status_2_without_cuda(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_e2e", ROOT / "benchmarks" / "gpu_e2e.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--device cpu --quick" in err
