"""Benchmark inside ComfyUI: our LoRA nodes (in place) vs ComfyUI's core LoraLoaders (backup + replace),
and 4-step LCM sampling through our nodes vs ComfyUI's built-in LCM route, side by side in one run.

    COMFYUI_PATH=/work/ComfyUI /work/comfyvenv/bin/python benchmarks/bench_comfyui.py [--quick] [--threads N]
        [--relative-delta 3e-02] [--cuda]

Models (full size, random weights, fp32 on the CPU): ComfyUI's venv has no diffusers, so the files are
built once by the project's python (`--build-python`, default `python` on PATH, which must import
diffusers, transformers and lcm_accel) into `--cache` (default ~/.cache/lcm_accel/bench_comfyui,
about 4.4 GB) and reused: a single-file SD1.5 checkpoint (diffusers' SD1.5 UNet, 860M; CLIP-L
12x768 with CLIP's 49408-token vocabulary; the SD VAE), an LCM-LoRA-shaped adapter (rank 64, kohya
`lora_unet_*`, fp16, alpha 8) and a rank-16 style adapter, both written by
`bench_lora_patch.write_adapters` (attention q/k/v/out, ff, proj_in/out, resnet conv1/conv2;
each delta entry ~`--relative-delta` x the weight's std, default 3e-2: real LoRAs change weights by a
few %, and our restore state grows with it). The style adapter is compared in kohya layout (alpha =
rank, so the same weights as its PEFT twin): ComfyUI 0.3.64 cannot map PEFT `unet.*.to_q.lora_A`
keys; the number it leaves unloaded is printed.

Everything ComfyUI-side runs in-process in fresh subprocesses of this script: COMFYUI_PATH on
sys.path, argv `--cpu --force-fp32 --base-directory <cache>` parsed at import (`--cuda`: no --cpu /
--force-fp32, ComfyUI's own GPU choice, fp16), the pack loaded from `<cache>/custom_nodes/lcm_accel` (a
symlink to this repository) by `nodes.load_custom_node`, and the node classes called as ComfyUI's
executor calls them (FUNCTION on a fresh instance).

Load ("a" = LoraLoaderModelOnly(LCM, 1.0) -> LoraLoaderModelOnly(style, 0.8); "b" = LCMAdapterMixer
lora_1 LCM 1.0, lora_2 style 0.8, rank 0): after CheckpointLoaderSimple and loading the bare model
(the baseline), time the node(s) plus `comfy.model_management.load_models_gpu([model])`, which is
where the weights are patched (ComfyUI: a backup and a new tensor per weight; ours: in place). Host
memory after loading (resident) and its peak above the baseline come from /proc/self/status (VmHWM
after clear_refs); our restore state is printed next to the patched bytes. Each repeat is a fresh
process; variants alternate; the fastest counts. ComfyUI's "lora key not loaded" / "NOT LOADED"
warnings are counted, and a few patched layers of "a" and "b" are compared.

Strength change: after a loaded "a" / "b", the style strength goes 0.8 -> 0.5 -> 0.8 ...; each change
times the node(s) that re-run plus load_models_gpu, i.e. everything before the next image can start
(ComfyUI: unpatch + re-patch; ours: an in-place re-weight).

Sampling: one process loads the model, applies the mix, then times (after one warm-up each)
4-step 512x512 batch-1 cfg-1.0 runs of LCMKSampler, SamplerCustom + LCMScheduler + LCMSampler,
ModelSamplingDiscrete(lcm) + KSampler(lcm, sgm_uniform), and with `--cuda` LCMKSampler behind
LCMFastMode (captured UNet), interleaved; best of N; a forward hook on the UNet counts its calls per
run. The machine is shared (2 cores): timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHECKPOINT = "sd15_full_random.safetensors"
# the adapters' strength: each delta entry ~ REL x the weight's std (real LCM / style LoRAs: a few %)
REL = os.environ.get("LCM_ACCEL_BENCH_REL", "3e-02")
LCM_LORA = f"lcm_lora_rank64_kohya_rel{REL}.safetensors"
STYLE_LORA = f"style_rank16_kohya_rel{REL}.safetensors"
STYLE_LORA_PEFT = f"style_rank16_peft_rel{REL}.safetensors"
MANIFEST = "manifest.json"
LCM_WEIGHT, STYLE_WEIGHT = 1.0, 0.8
STEPS, SEED = 4, 1
# LDM names of a few patched layers compared between the two load routes
COMPARE = (
    "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    "diffusion_model.input_blocks.1.1.proj_in.weight",
    "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
    "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight",
    "diffusion_model.input_blocks.4.0.in_layers.2.weight",
    "diffusion_model.output_blocks.3.0.out_layers.3.weight",
)


# ---------------------------------------------------------------- model files (project python)


def build_models(cache: Path) -> None:
    """Write the checkpoint (once) and the two adapters of strength REL into `cache/models` (needs diffusers)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from lcm_accel.fixtures import TinyModel, save_ldm_checkpoint

    sys.path.insert(0, str(HERE))
    from bench_lora_patch import SD15_UNET, write_adapters

    start = time.perf_counter()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(  # CLIP-L with the real vocabulary size: ComfyUI's own tokenizer
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    models = cache / "models"
    if not (models / "checkpoints" / CHECKPOINT).exists():
        save_ldm_checkpoint(TinyModel("sd15", unet, vae, [text]), models / "checkpoints" / CHECKPOINT)
    loras = models / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    lcm, style, layers = write_adapters(unet, loras, quick=False, args_relative=float(REL))
    lcm.rename(loras / LCM_LORA)
    style.rename(loras / STYLE_LORA_PEFT)
    kohya = {}
    for key, tensor in load_file(str(loras / STYLE_LORA_PEFT)).items():  # unet.<module>.lora_A.weight
        module, factor = key[len("unet.") :].rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if factor == 'A.weight' else 'up'}.weight"] = tensor
        if factor == "A.weight":
            kohya[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0])).half()  # alpha = rank: PEFT's scale 1
    save_file(kohya, str(loras / STYLE_LORA))
    (cache / f"rel{REL}.{MANIFEST}").write_text(json.dumps({"layers": layers, "seconds": time.perf_counter() - start}))
    print(f"built {models} in {time.perf_counter() - start:.0f} s ({layers} adapted layers)")


def ensure_models(cache: Path, build_python: str) -> dict:
    """Build the model files with the project's python unless the cache already holds them."""
    if not (cache / f"rel{REL}.{MANIFEST}").exists():
        print(f"building full-size models into {cache} with {build_python} (once) ...", flush=True)
        subprocess.run(
            [build_python, str(Path(__file__).resolve()), "--build-models", "--cache", str(cache)], check=True
        )
    link = cache / "custom_nodes" / "lcm_accel"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return json.loads((cache / f"rel{REL}.{MANIFEST}").read_text())


# ---------------------------------------------------------------- inside ComfyUI (worker processes)


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def release_free_heap() -> None:
    """Hand memory the allocator keeps after frees back to the OS (glibc malloc_trim), so that the
    resident figure counts what is held, not freed temporaries; done the same way for both variants."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure then includes the allocator's free pages
        pass


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


class LoraWarnings:
    """Counts ComfyUI's warnings about LoRA keys it could not map onto the model."""

    def __init__(self):
        import logging

        self.messages: list[str] = []
        outer = self

        class Handler(logging.Handler):
            def emit(self, record):
                text = record.getMessage()
                if text.startswith(("lora key not loaded", "NOT LOADED")):
                    outer.messages.append(text)

        logging.getLogger().addHandler(Handler(logging.WARNING))


def start_comfyui(cache: Path, threads: int | None):
    """Import ComfyUI in-process as main.py would (CPU, fp32) and load the pack as a custom node.

    Returns ComfyUI's `nodes` module, whose NODE_CLASS_MAPPINGS then hold the core nodes, the
    comfy_extras nodes used here and the pack's nodes."""
    import asyncio

    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path or not (Path(comfy_path) / "comfy").is_dir():
        raise SystemExit(f"set COMFYUI_PATH to a ComfyUI checkout (got {comfy_path!r})")
    sys.path.insert(0, comfy_path)
    device_args = [] if os.environ.get("LCM_ACCEL_BENCH_CUDA") else ["--cpu", "--force-fp32"]
    sys.argv = [sys.argv[0], *device_args, "--base-directory", str(cache)]
    import comfy.options

    comfy.options.enable_args_parsing()  # comfy.cli_args parses sys.argv at import only when enabled
    import torch

    if threads:
        torch.set_num_threads(threads)
    import comfy.utils

    import nodes

    comfy.utils.set_progress_bar_enabled(False)
    for extra in ("nodes_model_advanced.py", "nodes_custom_sampler.py"):
        if not asyncio.run(
            nodes.load_custom_node(os.path.join(comfy_path, "comfy_extras", extra), module_parent="comfy_extras")
        ):
            raise SystemExit(f"ComfyUI could not load comfy_extras/{extra}")
    if not asyncio.run(nodes.load_custom_node(str(cache / "custom_nodes" / "lcm_accel"))):
        raise SystemExit("ComfyUI could not load the pack from custom_nodes/lcm_accel (see the log above)")
    return nodes


def run_node(nodes, class_type: str, **inputs):
    """Execute one node as ComfyUI's executor does: FUNCTION on a fresh instance."""
    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    obj = cls()
    return getattr(obj, cls.FUNCTION)(**inputs)


def load_checkpoint(nodes):
    import comfy.model_management as mm  # importable once start_comfyui has run

    model, clip, vae = run_node(nodes, "CheckpointLoaderSimple", ckpt_name=CHECKPOINT)[:3]
    mm.load_models_gpu([model])  # the bare model, loaded: the baseline both variants start from
    return model, clip, vae


def apply_loras(nodes, variant: str, model, style_weight: float = STYLE_WEIGHT, first=None):
    """The LoRA nodes of one variant: "a" two chained LoraLoaderModelOnly, "b" LCMAdapterMixer.
    `first`: variant a's first loader output, kept as ComfyUI's cache keeps it when only the second
    node's strength changes."""
    if variant == "a":
        if first is None:
            first = run_node(nodes, "LoraLoaderModelOnly", model=model, lora_name=LCM_LORA, strength_model=LCM_WEIGHT)[
                0
            ]
        return run_node(nodes, "LoraLoaderModelOnly", model=first, lora_name=STYLE_LORA, strength_model=style_weight)[0]
    return run_node(
        nodes,
        "LCMAdapterMixer",
        model=model,
        lora_1=LCM_LORA,
        weight_1=LCM_WEIGHT,
        lora_2=STYLE_LORA,
        weight_2=style_weight,
        lora_3="None",
        weight_3=1.0,
        lora_4="None",
        weight_4=1.0,
        rank=0,
    )[0]


def restore_state_bytes(patched) -> tuple[int, int]:
    """(restore-state bytes, patched bytes) of our in-place route on `patched`'s model ((0, 0) for ComfyUI's)."""
    controller = getattr(patched.model, "lcm_accel_inplace", None)
    if controller is None or not controller.applied:
        return 0, 0
    state = 0
    for applied in controller.applied.values():
        nbytes = getattr(applied.state, "nbytes", 0)
        state += nbytes if isinstance(nbytes, int) else 0
    patched_bytes = sum(a.param.numel() * a.param.element_size() for a in controller.applied.values())
    return state, patched_bytes


def has_mixer(nodes) -> bool:
    return "LCMAdapterMixer" in nodes.NODE_CLASS_MAPPINGS


def worker_load(cache: Path, variant: str, threads: int | None, weights_out: Path | None) -> dict:
    """One load measurement in this (fresh) process; returns seconds, peak/resident MiB, warnings."""
    import gc

    warnings = LoraWarnings()
    nodes = start_comfyui(cache, threads)
    import comfy.model_management as mm
    import comfy.utils
    import torch

    if variant == "b" and not has_mixer(nodes):
        return {"skipped": "LCMAdapterMixer is not registered inside ComfyUI (no ComfyUI host yet)"}
    model = load_checkpoint(nodes)[0]
    originals = {k: comfy.utils.get_attr(model.model, k).detach().clone() for k in COMPARE}
    gc.collect()
    base = rss_mib()[0]
    reset_peak()
    start = time.perf_counter()
    patched = apply_loras(nodes, variant, model)
    nodes_s = time.perf_counter() - start
    mm.load_models_gpu([patched])
    seconds = time.perf_counter() - start
    gc.collect()
    release_free_heap()
    now, peak = rss_mib()
    if weights_out is not None:
        from safetensors.torch import save_file

        tensors = {k: comfy.utils.get_attr(patched.model, k).detach().float().contiguous() for k in COMPARE}
        tensors.update({f"original.{k}": v.float().contiguous() for k, v in originals.items()})
        save_file(tensors, str(weights_out))
    changed = sum(1 for k in COMPARE if not torch.equal(comfy.utils.get_attr(patched.model, k), originals[k]))
    state, patched_bytes = restore_state_bytes(patched)
    return {
        "restore_state_mib": state / 2**20,
        "patched_mib": patched_bytes / 2**20,
        "seconds": seconds,
        "nodes_seconds": nodes_s,
        "peak_extra_mib": peak - base,
        "resident_extra_mib": now - base,
        "baseline_rss_mib": base,
        "threads": torch.get_num_threads(),
        "patch_keys": len(patched.patches),
        "lora_warnings": len(warnings.messages),
        "warning_examples": warnings.messages[:3],
        "compared_layers_changed": changed,
    }


def worker_reweight(cache: Path, variant: str, threads: int | None, repeats: int) -> dict:
    """The cost of one strength change before the next image: after a load of the variant (style 0.8),
    the style strength goes to 0.5 and back, each time node(s) + load_models_gpu timed; best of `repeats`.
    Variant a re-runs only its second LoraLoaderModelOnly (ComfyUI's cache keeps the first)."""
    nodes = start_comfyui(cache, threads)
    import comfy.model_management as mm
    import comfy.utils

    model = load_checkpoint(nodes)[0]
    first = None
    if variant == "a":
        first = run_node(nodes, "LoraLoaderModelOnly", model=model, lora_name=LCM_LORA, strength_model=LCM_WEIGHT)[0]
    mm.load_models_gpu([apply_loras(nodes, variant, model, STYLE_WEIGHT, first)])
    times, keep = [], []
    for r in range(repeats):
        weight = 0.5 if r % 2 == 0 else STYLE_WEIGHT
        start = time.perf_counter()
        patched = apply_loras(nodes, variant, model, weight, first)
        mm.load_models_gpu([patched])
        times.append(time.perf_counter() - start)
        keep.append(patched)  # ComfyUI's cache holds the previous outputs too
        print(f"{PROGRESS}strength change {variant} -> {weight}: {times[-1]:.2f} s", flush=True)
    key = COMPARE[0]
    return {
        "seconds": min(times),
        "all": times,
        "checksum": float(comfy.utils.get_attr(keep[-1].model, key).double().sum()),
    }


def worker_peft_keys(cache: Path) -> dict:
    """How many keys of the PEFT-layout style file ComfyUI leaves unloaded (key mapping only)."""
    warnings = LoraWarnings()
    nodes = start_comfyui(cache, 1)
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils

    model = run_node(nodes, "CheckpointLoaderSimple", ckpt_name=CHECKPOINT)[0]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    sd = comfy.utils.load_torch_file(str(cache / "models" / "loras" / STYLE_LORA_PEFT), safe_load=True)
    loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(sd), key_map)
    return {
        "file_keys": len(sd),
        "mapped_layers": len(loaded),
        "unloaded_keys": len(warnings.messages),
        "examples": warnings.messages[:2],
    }


class ForwardCounter:
    """Counts the UNet's forwards and the time spent inside them."""

    def __init__(self, module):
        self.calls, self.seconds, self._t = 0, 0.0, 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._t = time.perf_counter()

    def _post(self, module, args, output):
        self.seconds += time.perf_counter() - self._t
        self.calls += 1

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0


def worker_sample(cache: Path, threads: int | None, size: int, repeats: int) -> dict:
    """Time the LCM sampling routes on one patched model (patching excluded); best of `repeats`."""
    nodes = start_comfyui(cache, threads)
    import comfy.model_management as mm
    import torch

    model, clip, _ = load_checkpoint(nodes)
    mixer = has_mixer(nodes)
    patched = apply_loras(nodes, "b" if mixer else "a", model)
    mm.load_models_gpu([patched])
    positive = run_node(nodes, "CLIPTextEncode", clip=clip, text="a photo of a cat, oil painting")[0]
    negative = run_node(nodes, "CLIPTextEncode", clip=clip, text="")[0]
    latent = run_node(nodes, "EmptyLatentImage", width=size, height=size, batch_size=1)[0]
    counter = ForwardCounter(patched.model.diffusion_model)

    def comfy_route():
        lcm_model = run_node(nodes, "ModelSamplingDiscrete", model=patched, sampling="lcm", zsnr=False)[0]
        return run_node(
            nodes,
            "KSampler",
            model=lcm_model,
            seed=SEED,
            steps=STEPS,
            cfg=1.0,
            sampler_name="lcm",
            scheduler="sgm_uniform",
            positive=positive,
            negative=negative,
            latent_image=latent,
            denoise=1.0,
        )[0]

    def lcm_ksampler():
        return run_node(
            nodes,
            "LCMKSampler",
            model=patched,
            seed=SEED,
            steps=STEPS,
            cfg=1.0,
            positive=positive,
            negative=negative,
            latent_image=latent,
            original_inference_steps=50,
            gamma=0.0,
            denoise=1.0,
        )[0]

    def sampler_custom():
        sigmas = run_node(nodes, "LCMScheduler", model=patched, steps=STEPS, original_inference_steps=50, strength=1.0)[
            0
        ]
        sampler = run_node(nodes, "LCMSampler", gamma=0.0)[0]
        return run_node(
            nodes,
            "SamplerCustom",
            model=patched,
            add_noise=True,
            noise_seed=SEED,
            cfg=1.0,
            positive=positive,
            negative=negative,
            sampler=sampler,
            sigmas=sigmas,
            latent_image=latent,
        )[0]

    def lcm_fast():
        fast = run_node(nodes, "LCMFastMode", model=patched, enable=True, backend="cuda_graph")[0]
        return run_node(
            nodes,
            "LCMKSampler",
            model=fast,
            seed=SEED,
            steps=STEPS,
            cfg=1.0,
            positive=positive,
            negative=negative,
            latent_image=latent,
            original_inference_steps=50,
            gamma=0.0,
            denoise=1.0,
        )[0]

    routes = {"ComfyUI KSampler lcm/sgm_uniform": comfy_route}
    if "LCMKSampler" in nodes.NODE_CLASS_MAPPINGS:
        routes["ours LCMKSampler"] = lcm_ksampler
        routes["ours SamplerCustom+LCMScheduler+LCMSampler"] = sampler_custom
        if torch.cuda.is_available() and os.environ.get("LCM_ACCEL_BENCH_CUDA"):
            routes["ours LCMKSampler + LCMFastMode"] = lcm_fast
    best: dict[str, dict] = {}
    samples = {}
    for run in range(1 + repeats):  # run 0 warms up every route
        for name, route in routes.items():
            counter.reset()
            start = time.perf_counter()
            with torch.inference_mode():
                out = route()
            wall = time.perf_counter() - start
            samples[name] = out["samples"]
            print(
                f"{PROGRESS}{'warm-up' if run == 0 else f'run {run}'} {name}: {wall:.2f} s, "
                f"UNet {counter.calls} calls {counter.seconds:.2f} s",
                flush=True,
            )
            if run and (name not in best or wall < best[name]["seconds"]):
                best[name] = {"seconds": wall, "unet_calls": counter.calls, "unet_seconds": counter.seconds}
    ref = samples.get("ours LCMKSampler")
    for name, out in samples.items():  # our two routes must agree; ComfyUI's differs by design
        best[name]["max_abs_diff_vs_lcmksampler"] = None if ref is None else float((out - ref).abs().max())
        best[name]["finite"] = bool(torch.isfinite(out).all())
        best[name]["output_abs_max"] = float(out.abs().max())
    return {
        "routes": best,
        "lora_route": "LCMAdapterMixer" if mixer else "2x LoraLoaderModelOnly",
        "size": size,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- orchestration (fresh processes)

RESULT = "BENCH_RESULT "
PROGRESS = "BENCH_PROGRESS "


def spawn(args: argparse.Namespace, *worker: str) -> dict:
    """Run this script as a worker in a fresh process; its last RESULT line is the answer."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cache", str(args.cache), *worker]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        lines = []
        for line in proc.stdout:  # echo the worker's progress lines as they come
            if line.startswith(PROGRESS):
                print("  " + line[len(PROGRESS) :].rstrip(), flush=True)
            lines.append(line)
        proc.wait()
        results = [line for line in lines if line.startswith(RESULT)]
        if proc.returncode or not results:
            errors.seek(0)
            sys.stderr.write("".join(lines)[-3000:] + errors.read()[-5000:])
            raise SystemExit(f"worker {' '.join(worker)} failed (exit {proc.returncode})")
    return json.loads(results[-1][len(RESULT) :])


def compare_weights(files_a: list[Path], files_b: list[Path]) -> None:
    """Print max|a - b| per compared layer (first runs), then the worst over every run of both."""
    from safetensors.torch import load_file

    runs_a, runs_b = [load_file(str(f)) for f in files_a], [load_file(str(f)) for f in files_b]
    a, b = runs_a[0], runs_b[0]
    print("\npatched weights, a vs b (same layers, fp32, first runs):")
    for key in COMPARE:
        delta = (a[key] - a[f"original.{key}"]).abs().max()
        diff = (a[key] - b[key]).abs().max()
        print(f"  {key[len('diffusion_model.') :]:<62} max|a-b| {diff:.2e}  max|LoRA change| {delta:.2e}")
    worst = max(float((x[key] - a[key]).abs().max()) for x in runs_a + runs_b for key in COMPARE)
    print(
        f"  every run of a and b against a's first run: max abs diff {worst:.2e} ({len(runs_a)} + {len(runs_b)} runs)"
    )


def bench_load(args: argparse.Namespace, repeats: int, work: Path) -> None:
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for r in range(repeats):
        for variant in ("a", "b"):
            if runs[variant] and "skipped" in runs[variant][0]:
                continue
            res = spawn(
                args, "--worker-load", variant, "--weights-out", str(work / f"weights_{variant}_{r}.safetensors")
            )
            runs[variant].append(res)
            if "skipped" not in res:
                print(
                    f"  load {variant} run {r + 1}: {res['seconds']:.2f} s (nodes {res['nodes_seconds']:.2f} s), "
                    f"peak +{res['peak_extra_mib']:.0f} MiB, resident +{res['resident_extra_mib']:.0f} MiB, "
                    f"{res['patch_keys']} ComfyUI patch keys, restore state {res['restore_state_mib']:.1f} MiB of "
                    f"{res['patched_mib']:.0f} MiB patched, {res['lora_warnings']} LoRA-key warnings",
                    flush=True,
                )
    labels = {"a": "a: 2x LoraLoaderModelOnly", "b": "b: LCMAdapterMixer"}
    print(
        f"\nLoRA load + patch (node execution + load_models_gpu), fresh process each, best of {repeats}; "
        f"threads {runs['a'][0]['threads']}, baseline RSS {runs['a'][0]['baseline_rss_mib']:.0f} MiB"
    )
    print(f"{'variant':<28}{'best s':>8}{'all runs s':>22}{'peak MiB':>10}{'resid MiB':>11}{'warnings':>10}")
    best = {}
    for variant, results in runs.items():
        if "skipped" in results[0]:
            print(f"{labels[variant]:<28} skipped: {results[0]['skipped']}")
            continue
        best[variant] = min(results, key=lambda x: x["seconds"])
        print(
            f"{labels[variant]:<28}{best[variant]['seconds']:>8.2f}"
            f"{', '.join(format(x['seconds'], '.2f') for x in results):>22}"
            f"{min(x['peak_extra_mib'] for x in results):>10.0f}{best[variant]['resident_extra_mib']:>11.0f}"
            f"{max(x['lora_warnings'] for x in results):>10d}"
        )
        for text in best[variant]["warning_examples"]:
            print(f"    {text}")
    if len(best) == 2:
        a, b = best["a"], best["b"]
        print(
            f"ratio a/b: time {a['seconds'] / b['seconds']:.2f}x, "
            f"peak memory {a['peak_extra_mib'] / max(b['peak_extra_mib'], 1):.2f}x"
        )
        print(
            f"host memory held after loading: b/a = {b['resident_extra_mib'] / max(a['resident_extra_mib'], 1):.3f} "
            f"(target <= 0.1); our restore state {b['restore_state_mib']:.1f} MiB = "
            f"{b['restore_state_mib'] / max(b['patched_mib'], 1e-9):.2%} of the {b['patched_mib']:.0f} MiB patched"
        )
        compare_weights(*([work / f"weights_{v}_{r}.safetensors" for r in range(len(runs[v]))] for v in "ab"))


def bench_reweight(args: argparse.Namespace, repeats: int) -> None:
    res = {v: spawn(args, "--worker-reweight", v, "--repeats", str(repeats)) for v in ("a", "b")}
    print(
        f"\nOne strength change before the next image (style 0.8 <-> 0.5: node(s) + load_models_gpu), "
        f"best of {repeats}, one process per variant"
    )
    print(
        f"  a: 2x LoraLoaderModelOnly (ComfyUI unpatch + re-patch): {res['a']['seconds']:.3f} s  "
        f"(all: {', '.join(f'{t:.3f}' for t in res['a']['all'])})"
    )
    print(
        f"  b: LCMAdapterMixer (in-place re-weight):               {res['b']['seconds']:.3f} s  "
        f"(all: {', '.join(f'{t:.3f}' for t in res['b']['all'])})"
    )
    print(
        f"  ratio a/b: {res['a']['seconds'] / res['b']['seconds']:.2f}x (target: >= 1 on the CPU); "
        f"checksum of {COMPARE[0].split('.', 1)[1]} a {res['a']['checksum']:.6f} b {res['b']['checksum']:.6f}"
    )


def bench_sampling(args: argparse.Namespace, size: int, repeats: int) -> None:
    res = spawn(args, "--worker-sample", "--size", str(size), "--repeats", str(repeats))
    routes = res["routes"]
    print(
        f"\nLCM sampling, {STEPS} steps, {size}x{size}, batch 1, cfg 1.0, on the {res['lora_route']} model "
        f"(patched before timing), best of {repeats} after a warm-up; threads {res['threads']}"
    )
    print(
        f"{'route':<44}{'s/run':>7}{'s/step':>8}{'UNet calls':>11}{'UNet s':>8}{'non-UNet ms/step':>17}"
        f"{'max|x-LCMKSampler|':>19}"
    )
    for name, r in routes.items():
        diff = r["max_abs_diff_vs_lcmksampler"]
        print(
            f"{name:<44}{r['seconds']:>7.2f}{r['seconds'] / STEPS:>8.3f}{r['unet_calls']:>11d}"
            f"{r['unet_seconds']:>8.2f}{(r['seconds'] - r['unet_seconds']) / STEPS * 1000:>17.1f}"
            + (f"{diff:>19.2e}" if diff is not None and name.startswith("ours") else f"{'-':>19}")
            + ("" if r["finite"] else "  NOT FINITE")
        )
    comfy = routes["ComfyUI KSampler lcm/sgm_uniform"]
    comfy_other = (comfy["seconds"] - comfy["unet_seconds"]) / STEPS
    for name, r in routes.items():
        if name.startswith("ours"):
            other = (r["seconds"] - r["unet_seconds"]) / STEPS
            print(
                f"{name}: {r['seconds'] / comfy['seconds']:.3f}x ComfyUI's time per step "
                f"({(r['seconds'] - comfy['seconds']) / STEPS * 1000:+.0f} ms/step, of which outside the UNet "
                f"{(other - comfy_other) * 1000:+.1f} ms/step)"
            )
    print(
        "(ComfyUI's route runs sgm_uniform timesteps and its own per-step noise, so its latent differs "
        "from ours by design; the UNet time is what the shared machine makes noisy)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "lcm_accel" / "bench_comfyui",
        help="where the model files are built once and kept (also ComfyUI's --base-directory)",
    )
    parser.add_argument(
        "--build-python",
        default="python",
        help="a python with diffusers, transformers and lcm_accel, to build the model files",
    )
    parser.add_argument(
        "--relative-delta",
        default=None,
        help="adapter strength: delta entries ~ this x the weight's std (default 3e-02)",
    )
    parser.add_argument("--quick", action="store_true", help="1 load run per variant; sampling 256x256, best of 1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers")
    parser.add_argument("--load-repeats", type=int, default=None, help="fresh-process load runs per variant (3)")
    parser.add_argument("--sample-repeats", type=int, default=None, help="timed sampling runs per route (3)")
    parser.add_argument("--size", type=int, default=None, help="sampling width and height (512; --quick 256)")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-reweight", action="store_true")
    parser.add_argument(
        "--cuda",
        action="store_true",
        help="run ComfyUI on its default GPU (no --cpu / --force-fp32) and add the LCMFastMode route",
    )
    parser.add_argument("--worker-reweight", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--build-models", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-load", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--weights-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-peft", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-sample", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_models:
        return build_models(args.cache)
    if args.worker_load:
        return print(RESULT + json.dumps(worker_load(args.cache, args.worker_load, args.threads, args.weights_out)))
    if args.worker_reweight:
        return print(RESULT + json.dumps(worker_reweight(args.cache, args.worker_reweight, args.threads, args.repeats)))
    if args.worker_peft:
        return print(RESULT + json.dumps(worker_peft_keys(args.cache)))
    if args.worker_sample:
        return print(RESULT + json.dumps(worker_sample(args.cache, args.threads, args.size, args.repeats)))

    if args.cuda:
        os.environ["LCM_ACCEL_BENCH_CUDA"] = "1"  # inherited by the workers
    if args.relative_delta and args.relative_delta != REL:  # the file names follow it: re-run with it set
        os.environ["LCM_ACCEL_BENCH_REL"] = args.relative_delta
        raise SystemExit(subprocess.call([sys.executable, *sys.argv]))
    manifest = ensure_models(args.cache, args.build_python)
    load_repeats = args.load_repeats or (1 if args.quick else 3)
    sample_repeats = args.sample_repeats or (1 if args.quick else 3)
    size = args.size or (256 if args.quick else 512)
    print(
        f"ComfyUI at {os.environ.get('COMFYUI_PATH')}, --cpu --force-fp32; full-size SD1.5 random weights "
        f"(fp32); LCM-LoRA-shaped rank 64 kohya + style rank 16 (kohya) on {manifest['layers']} layers, "
        f"delta ~{REL} x std(W); "
        f"{os.cpu_count()} CPU cores shared with other jobs: timings are noisy",
        flush=True,
    )
    peft = spawn(args, "--worker-peft")
    print(
        f"PEFT-layout twin of the style LoRA in ComfyUI: {peft['unloaded_keys']} of {peft['file_keys']} keys "
        f"not loaded ({peft['mapped_layers']} layers mapped); the kohya file is used below",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_comfyui_") as work:
        if not args.skip_load:
            bench_load(args, load_repeats, Path(work))
    if not args.skip_reweight:
        bench_reweight(args, 3 if args.quick else 5)
    if not args.skip_sampling:
        bench_sampling(args, size, sample_repeats)


if __name__ == "__main__":
    main()
