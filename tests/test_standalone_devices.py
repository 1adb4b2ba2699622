"""Device and precision of the standalone host (`run --device/--dtype/--vae-dtype`, runtime/devices.py).

CPU: the settings resolve as documented and refuse what the machine lacks; the checkpoint loader builds each
part straight in its dtype (the same bits as float32 weights cast afterwards) and caches per placement; a
workflow in bf16 / fp16 gives an image close to the float32 one (PSNR); LATENT, IMAGE and CONDITIONING
values between nodes stay float32 on the CPU whatever the models' dtype. CUDA-only tests (skipped without
CUDA): cuda fp16 against cpu fp32, and `run --device cuda --fast` really capturing (no fallback message).

Tolerances (tiny random SD1.5, 64x64, 8-bit PNGs): PSNR against the float32 image >= 30 dB for bf16
(measured 41 dB), >= 45 dB for fp16 (measured 61 dB); cuda fp16 vs cpu fp32 >= 30 dB.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcm_accel.cli import main
from lcm_accel.fixtures import save_ldm_checkpoint, tiny_model, write_clip_tokenizer
from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya
from lcm_accel.harness.executor import Executor
from lcm_accel.harness.registry import default_registry
from lcm_accel.hosts.standalone.sampling_pipeline import lcm_ksample
from lcm_accel.runtime import checkpoints as checkpoint_loader
from lcm_accel.runtime import fast_mode
from lcm_accel.runtime.checkpoints import load_checkpoint
from lcm_accel.runtime.devices import (
    CPU_FP32,
    DeviceError,
    DeviceSettings,
    Placement,
    current_placement,
    device_default,
    resolve,
)
from lcm_accel.runtime.model_paths import ModelPaths

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "example_workflows" / "lcm_lora_txt2img.json"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
MIN_PSNR = {"bf16": 30.0, "fp16": 45.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder with what the txt2img workflow names: a tiny SD1.5 checkpoint and LCM-LoRA."""
    models = tmp_path_factory.mktemp("device_models") / "models"
    sd15 = tiny_model("sd15")
    save_ldm_checkpoint(sd15, models / "checkpoints" / CHECKPOINT)
    write_kohya(
        models / "loras" / "lcm-lora-sdv1-5.safetensors",
        random_factors(lora_targets(sd15.unet), 8, seed=11, scale=0.05),
        alpha=8.0,
    )
    write_clip_tokenizer(models / "tokenizers" / "clip")
    return models


@pytest.fixture(scope="module")
def fp32_image(models, tmp_path_factory) -> np.ndarray:
    """The workflow's image on the CPU in float32 (the reference of the precision tests)."""
    return run_workflow(models, tmp_path_factory.mktemp("fp32"), "--device", "cpu")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in 0..1."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def run_workflow(models: Path, out: Path, *flags: str) -> np.ndarray:
    """The txt2img workflow at 64x64, 2 steps, through the CLI; the saved image in 0..1."""
    args = [
        "run",
        str(WORKFLOW),
        "--models",
        str(models),
        "--out",
        str(out),
        "--set",
        "5.width=64",
        "--set",
        "5.height=64",
        "--set",
        "6.steps=2",
        *flags,
    ]
    assert main(args) == 0
    return np.asarray(Image.open(next(out.glob("*.png")))).astype(np.float64) / 255.0


# --------------------------------------------------------------------------- settings
def test_settings_resolve_to_the_documented_defaults():
    assert resolve(DeviceSettings("cpu")) == CPU_FP32
    half = resolve(DeviceSettings("cpu", "fp16"))
    assert (half.unet_dtype, half.text_encoder_dtype, half.vae_dtype) == (torch.float16, torch.float16, torch.float32)
    mixed = resolve(DeviceSettings("cpu", "bf16", text_encoder_dtype="fp32", vae_dtype="bf16"))
    assert (mixed.unet_dtype, mixed.text_encoder_dtype, mixed.vae_dtype) == (
        torch.bfloat16,
        torch.float32,
        torch.bfloat16,
    )
    auto = resolve(DeviceSettings("auto"))
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if auto.device.type == "cuda":  # fp16 UNet / text encoder; VAE bf16 where the GPU has it, else fp32
        assert auto.unet_dtype == auto.text_encoder_dtype == torch.float16
        assert auto.vae_dtype in (torch.bfloat16, torch.float32)
    assert current_placement() == CPU_FP32  # no run setting: the CPU in float32, as before
    with device_default(DeviceSettings("cpu", "bf16")) as placement:
        assert current_placement() == placement and placement.unet_dtype == torch.bfloat16
    assert current_placement() == CPU_FP32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, "device must be auto"),
        ({"device": "mps"}, "runs on CPU or CUDA"),
        ({"device": "cpu", "dtype": "fp8"}, "dtype must be one of fp32, fp16, bf16"),
        ({"device": "cpu", "vae_dtype": "half"}, "vae_dtype must be one of"),
    ],
)
def test_settings_refuse_unknown_devices_and_dtypes(kwargs, message):
    with pytest.raises(DeviceError, match=message):
        DeviceSettings(**kwargs)


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(models, tmp_path, capsys, device):
    with pytest.raises(DeviceError, match=f"--device {device}: CUDA is not available"):
        resolve(DeviceSettings(device))
    args = ["run", str(WORKFLOW), "--models", str(models), "--out", str(tmp_path), "--device", device]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --device {device}: CUDA is not available")
    assert "--device cpu" in err[0]
    assert not list(tmp_path.glob("*.png")), "nothing may run"


# --------------------------------------------------------------------------- loader
def test_loader_builds_each_part_in_its_dtype_and_caches_per_placement(models):
    path = models / "checkpoints" / CHECKPOINT
    full = load_checkpoint(path, CPU_FP32)
    half = Placement(torch.device("cpu"), torch.bfloat16, torch.float16, torch.float32)
    model, clip, vae = load_checkpoint(path, half)
    parts = {
        "unet": (full[0].unet, model.unet, torch.bfloat16),
        "vae": (full[2].vae, vae.vae, torch.float32),
        "text encoder": (full[1].text_encoders[0], clip.text_encoders[0], torch.float16),
    }
    for what, (reference, placed, dtype) in parts.items():
        assert placed is not reference
        params = dict(placed.named_parameters())
        assert {p.dtype for p in params.values()} == {dtype}, what
        assert all(p.device.type == "cpu" for p in placed.state_dict().values()), f"{what}: meta tensors left"
        for name, p in reference.named_parameters():  # read straight in the dtype = the cast of the fp32 weights
            assert torch.equal(params[name], p.to(dtype)), f"{what}: {name}"
    assert torch.equal(clip.text_encoders[0].embeddings.position_ids, full[1].text_encoders[0].embeddings.position_ids)
    again, _, _ = load_checkpoint(path, half)
    assert again.unet is model.unet, "the same placement must be a cache hit"
    with device_default(DeviceSettings("cpu", "bf16", text_encoder_dtype="fp16")):
        assert load_checkpoint(path)[0].unet is model.unet, "the run's placement is the default"
    keys = [key for key in checkpoint_loader._CACHE if key[0] == str(path.resolve())]
    assert {key[2] for key in keys} >= {CPU_FP32.key(), half.key()}


def test_diffusers_folder_loads_in_the_placement_dtypes(models, tmp_path):
    reference = tiny_model("sd15")
    folder = tmp_path / "tiny_sd15"
    reference.unet.save_pretrained(folder / "unet")
    reference.vae.save_pretrained(folder / "vae")
    reference.text_encoders[0].save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    placement = resolve(DeviceSettings("cpu", "fp16", vae_dtype="bf16"))
    model, clip, vae = load_checkpoint(folder, placement)
    for placed, source, dtype in (
        (model.unet, reference.unet, torch.float16),
        (vae.vae, reference.vae, torch.bfloat16),
        (clip.text_encoders[0], reference.text_encoders[0], torch.float16),
    ):
        params = dict(placed.named_parameters())
        assert {p.dtype for p in params.values()} == {dtype}
        for name, p in source.named_parameters():
            assert torch.equal(params[name], p.to(dtype)), name


# --------------------------------------------------------------------------- workflows
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_workflow_in_low_precision_is_close_to_float32(models, fp32_image, tmp_path, dtype):
    reference = fp32_image
    image = run_workflow(models, tmp_path / dtype, "--device", "cpu", "--dtype", dtype)
    assert psnr(image, reference) >= MIN_PSNR[dtype]
    assert not np.array_equal(image, reference), "the run must really have used the lower precision"
    placement = resolve(DeviceSettings("cpu", dtype))
    model, clip, vae = load_checkpoint(models / "checkpoints" / CHECKPOINT, placement)  # what the run loaded
    assert {p.dtype for p in model.unet.parameters()} == {placement.unet_dtype}
    assert {p.dtype for p in clip.text_encoders[0].parameters()} == {placement.text_encoder_dtype}
    assert {p.dtype for p in vae.vae.parameters()} == {torch.float32}  # the VAE stays fp32 on the CPU


def _sampling_prompt() -> dict:
    """Every sampling entry point on one model: KSampler (ancestral), KSamplerAdvanced, SamplerCustom with
    LCMSampler (TCD), LCMKSampler with a LoRA and DeepCache, and img2img through VAEEncode."""
    sampler = {"positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0]}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "strength_model": 1.0,
                "strength_clip": 1.0,
                "lora_name": "lcm-lora-sdv1-5.safetensors",
            },
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a (red:1.2) boat"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 1,
                "steps": 2,
                "cfg": 2.0,
                "sampler_name": "euler_ancestral",
                "scheduler": "normal",
                "denoise": 1.0,
                **sampler,
            },
        },
        "7": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["1", 0],
                "add_noise": "enable",
                "noise_seed": 2,
                "steps": 3,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "start_at_step": 0,
                "end_at_step": 2,
                "return_with_leftover_noise": "enable",
                **sampler,
            },
        },
        "8": {
            "class_type": "LCMAccel_Scheduler",
            "inputs": {"model": ["2", 0], "steps": 2, "original_inference_steps": 50, "strength": 1.0},
        },
        "9": {"class_type": "LCMAccel_Sampler", "inputs": {"gamma": 0.3}},
        "10": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["2", 0],
                "add_noise": True,
                "noise_seed": 3,
                "cfg": 1.0,
                "sampler": ["9", 0],
                "sigmas": ["8", 0],
                **sampler,
            },
        },
        "11": {
            "class_type": "LCMAccel_DeepCache",
            "inputs": {
                "model": ["2", 0],
                "cache_interval": 2,
                "cache_depth": 0,
                "start_percent": 0.0,
                "end_percent": 1.0,
                "schedule": "uniform",
            },
        },
        "12": {
            "class_type": "LCMAccel_KSampler",
            "inputs": {
                "model": ["11", 0],
                "seed": 4,
                "steps": 3,
                "cfg": 1.0,
                "original_inference_steps": 50,
                "gamma": 0.0,
                "denoise": 1.0,
                **sampler,
            },
        },
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}},
        "14": {"class_type": "VAEEncode", "inputs": {"pixels": ["13", 0], "vae": ["1", 2]}},
        "15": {
            "class_type": "LCMAccel_KSampler",
            "inputs": {
                "model": ["2", 0],
                "seed": 5,
                "steps": 2,
                "cfg": 1.0,
                "original_inference_steps": 50,
                "gamma": 0.0,
                "denoise": 0.5,
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["14", 0],
            },
        },
        "16": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["1", 2]}},
        "17": {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}},
        "18": {"class_type": "PreviewImage", "inputs": {"images": ["13", 0]}},
        "19": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "20": {"class_type": "PreviewImage", "inputs": {"images": ["19", 0]}},
        "21": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "22": {"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}},
        "23": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 1], "vae": ["1", 2]}},
        "24": {"class_type": "PreviewImage", "inputs": {"images": ["23", 0]}},
    }


LATENTS = {"6": 0, "7": 0, "10": 0, "10/denoised": 1, "12": 0, "14": 0, "15": 0}
IMAGES = ("13", "16", "19", "21", "23")


def _run_all(models: Path, tmp: Path, settings: DeviceSettings) -> dict[str, torch.Tensor]:
    """Every LATENT / IMAGE / CONDITIONING value of the sampling prompt run under `settings`, plus an
    inpainting run (noise mask) on the same MODEL; each checked to be float32 on the CPU."""
    with device_default(settings):
        result = Executor(default_registry(), ModelPaths(models, output_dir=tmp)).run(_sampling_prompt())
        values = {}
        for key, index in LATENTS.items():
            values[f"latent {key}"] = result.output(key.split("/")[0], index)[0]["samples"]
        for key in IMAGES:
            values[f"image {key}"] = result.output(key)[0]
        cond = result.output("3")[0][0]
        values["cond"], values["pooled"] = cond[0], cond[1]["pooled_output"]
        mask = torch.zeros(1, 64, 64)
        mask[:, :, 32:] = 1.0
        latent = {"samples": values["latent 14"], "noise_mask": mask}
        values["inpaint"] = lcm_ksample(
            result.output("2")[0], 6, 2, 1.0, result.output("3")[0], result.output("4")[0], latent, denoise=0.8
        )["samples"]
    for name, value in values.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu", f"{name}: {value.dtype} on {value.device}"
        assert torch.isfinite(value).all(), name
    return values


def test_values_between_nodes_stay_float32_on_the_cpu(models, tmp_path):
    reference = _run_all(models, tmp_path, DeviceSettings("cpu"))
    low = _run_all(models, tmp_path, DeviceSettings("cpu", "bf16"))
    for name, value in low.items():  # bf16 models: the same values within bf16 rounding
        scale = float(reference[name].abs().max())
        assert float((value - reference[name]).abs().max()) <= 0.1 * scale + 0.02, name


# --------------------------------------------------------------------------- CUDA only
@CUDA
def test_cuda_fp16_workflow_is_close_to_cpu_fp32(models, fp32_image, tmp_path):
    image = run_workflow(models, tmp_path / "cuda", "--device", "cuda", "--dtype", "fp16")
    assert psnr(image, fp32_image) >= 30.0
    model, clip, vae = load_checkpoint(models / "checkpoints" / CHECKPOINT, resolve(DeviceSettings("cuda", "fp16")))
    assert {(p.device.type, p.dtype) for p in model.unet.parameters()} == {("cuda", torch.float16)}
    assert {p.device.type for p in vae.vae.parameters()} == {"cuda"}


@CUDA
def test_cuda_values_between_nodes_match_the_cpu(models, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, as on the CPU
    reference = _run_all(models, tmp_path, DeviceSettings("cpu"))
    on_cuda = _run_all(models, tmp_path, DeviceSettings("cuda", "fp32", vae_dtype="fp32"))
    for name, value in on_cuda.items():  # noise drawn on the CPU: the same seed gives the same values
        scale = float(reference[name].abs().max())
        assert float((value - reference[name]).abs().max()) <= 0.02 * scale + 0.01, name


@CUDA
def test_cuda_run_fast_captures_without_a_fallback_message(models, tmp_path, caplog):
    from lcm_accel.runtime.graph_cache import graph_cache

    fast_mode.forget_messages()
    eager = run_workflow(models, tmp_path / "eager", "--device", "cuda")
    model, clip, vae = load_checkpoint(models / "checkpoints" / CHECKPOINT, resolve(DeviceSettings("cuda")))
    backend = fast_mode.BACKENDS["cuda_graph"]
    caches = {
        "unet": graph_cache(model.unet, backend),
        "text encoder": graph_cache(clip.text_encoders[0], backend),
        "vae": graph_cache(vae.vae, backend),
    }
    before = {name: (cache.captures, cache.replays) for name, cache in caches.items()}
    with caplog.at_level(logging.WARNING, logger="lcm_accel.fast_mode"):
        fast = run_workflow(models, tmp_path / "fast", "--device", "cuda", "--fast")
    said = [r.getMessage() for r in caplog.records if r.name == "lcm_accel.fast_mode"]
    assert said == [], said
    assert psnr(fast, eager) >= 40.0
    # forwards through the captures (each a first capture or a replay): 2 UNet steps at cfg 1, 2 prompts of
    # one 77-token row each, 1 decode; none ran eager
    calls = {name: cache.captures + cache.replays - sum(before[name]) for name, cache in caches.items()}
    assert calls == {"unet": 2, "text encoder": 2, "vae": 1}
    assert all(cache.captures >= 1 and not cache.failed for cache in caches.values())
