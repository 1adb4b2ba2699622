"""Benchmark: the 4-step LCM-LoRA workflow against the sum of its model forwards, and against
the 25-step cfg-7 baseline workflow, on a full-size SD1.5 architecture with random weights.

    python benchmarks/bench_lcm_workflow.py [--size 256] [--threads N]

Writes a full-size SD1.5 single-file checkpoint (UNet 860M, VAE, CLIP ViT-L text encoder;
random weights) and an LCM-LoRA-shaped rank-64 kohya file into a temporary models folder, then
runs example_workflows/lcm_lora_txt2img.json and example_workflows/baseline_25step_cfg7.json through the
headless harness exactly as `python -m lcm_accel run` does. Each workflow is run once to load
(and patch) the model, then timed on a second run with new prompts and a new seed (so text
encoding, sampling, VAE decode and saving all run again; the model stays loaded); the LCM
workflow is timed --repeats times and the fastest run counts (the baseline, 10x longer, once). Forward
hooks on the UNet, the VAE decoder and the text encoder time every model forward inside that
same run, so `wall / forwards` is the harness+nodes overhead. u (one UNet forward) and F (the
text encodes + VAE decode) come from the same run, giving the speedup bound (50u+F)/(4u+F).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def build_full_sd15_checkpoint(path: Path, tokenizer_dir: Path) -> None:
    """A full-size SD1.5 single-file checkpoint with random weights (LDM key names)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lcm_accel.fixtures import TinyModel, save_ldm_checkpoint, write_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # the SD1.5 layout
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    write_clip_tokenizer(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=768,  # the offline tokenizer's vocabulary; the layers are CLIP-L's
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    save_ldm_checkpoint(TinyModel("sd15", unet, vae, [text]), path)


def build_lcm_lora(path: Path, checkpoint: Path) -> None:
    """An LCM-LoRA-shaped adapter: rank 64 on every attention, feed-forward, proj and resnet layer."""
    from diffusers import UNet2DConditionModel

    from lcm_accel.fixtures.tiny_loras import lora_targets, random_factors, write_kohya

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    write_kohya(path, random_factors(lora_targets(unet), rank=64, seed=1, scale=0.01, dtype=torch.float16), alpha=64.0)


class ForwardTimer:
    """Accumulates the wall time spent inside the forwards of the hooked modules."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.seconds = {name: 0.0 for name in modules}
        self.calls = {name: 0 for name in modules}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.seconds[name] += time.perf_counter() - self._start.pop(name)
            self.calls[name] += 1

        return hook

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def timed_runs(
    workflow: Path, models_root: Path, out: Path, size: int, timer: ForwardTimer, repeats: int = 1
) -> tuple[float, dict, dict]:
    """Run `workflow` once (loads and patches the model), then `repeats` more times, each with new
    prompts and seed; (wall, forward seconds, forward calls) of the fastest timed run."""
    from lcm_accel.harness.executor import Executor
    from lcm_accel.harness.registry import default_registry
    from lcm_accel.harness.runner import api_prompt, apply_overrides
    from lcm_accel.harness.workflow_io import load_workflow
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    registry = default_registry()
    paths = ModelPaths(models_root / "models", input_dir=models_root / "input", output_dir=out)
    executor = Executor(registry, paths)
    best = (float("inf"), {}, {})
    for run in range(1 + repeats):
        with use_model_paths(paths):
            prompt, extra = api_prompt(load_workflow(workflow), registry)
        sets = []
        for node_id, node in prompt.items():
            if node["class_type"] == "EmptyLatentImage":
                sets += [f"{node_id}.width={size}", f"{node_id}.height={size}"]
            if node["class_type"] == "CLIPTextEncode":
                sets.append(f"{node_id}.text=run {run}: {node['inputs']['text']}")
            if "seed" in node["inputs"]:
                sets.append(f"{node_id}.seed={run + 1}")
        apply_overrides(prompt, sets, registry, extra)
        timer.reset()
        start = time.perf_counter()
        executor.run(prompt, extra_pnginfo=extra)
        wall = time.perf_counter() - start
        if run > 0 and wall < best[0]:
            best = (wall, dict(timer.seconds), dict(timer.calls))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed LCM runs; the fastest counts (default 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lcm_accel.runtime.checkpoints import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="lcm_bench_") as tmp:
        root = Path(tmp)
        checkpoint = root / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors"
        t0 = time.perf_counter()
        build_full_sd15_checkpoint(checkpoint, root / "models" / "tokenizers" / "clip")
        build_lcm_lora(root / "models" / "loras" / "lcm-lora-sdv1-5.safetensors", checkpoint)
        (root / "input").mkdir()
        print(
            f"wrote full-size SD1.5 checkpoint + rank-64 LCM-LoRA in {time.perf_counter() - t0:.1f} s; "
            f"{torch.get_num_threads()} threads, {args.size}x{args.size}"
        )
        model, clip, vae = load_checkpoint(checkpoint)
        timer = ForwardTimer({"unet": model.unet, "text": clip.text_encoders[0], "vae_decode": vae.vae.decoder})
        results = {}
        for name, repeats in (("baseline_25step_cfg7", 1), ("lcm_lora_txt2img", args.repeats)):
            results[name] = timed_runs(
                ROOT / "example_workflows" / f"{name}.json", root, root / "output", args.size, timer, repeats
            )
        timer.close()

    lcm_wall, lcm_fwd, lcm_calls = results["lcm_lora_txt2img"]
    base_wall, base_fwd, base_calls = results["baseline_25step_cfg7"]
    forwards = sum(lcm_fwd.values())
    u = lcm_fwd["unet"] / lcm_calls["unet"]
    f = lcm_fwd["text"] + lcm_fwd["vae_decode"]
    bound = (50 * u + f) / (4 * u + f)
    speedup = base_wall / lcm_wall
    print("\nrun                    wall s   forwards s   unet calls  unet s   text s   vae s")
    for name, (wall, fwd, calls) in results.items():
        print(
            f"{name:22s} {wall:7.2f}   {sum(fwd.values()):9.2f}   {calls['unet']:9d}  {fwd['unet']:6.2f}  "
            f"{fwd['text']:6.2f}  {fwd['vae_decode']:6.2f}"
        )
    print(
        f"\nLCM workflow wall / its model forwards: {lcm_wall / forwards:.4f}  (target <= 1.03; "
        f"overhead {lcm_wall - forwards:.3f} s)"
    )
    print(f"baseline workflow wall / its model forwards: {base_wall / sum(base_fwd.values()):.4f}")
    print(f"u (one UNet forward, batch 1) = {u:.3f} s, F (text encodes + VAE decode) = {f:.3f} s")
    print(
        f"speedup over the 25-step cfg-7 baseline: {speedup:.2f}x; bound (50u+F)/(4u+F) = {bound:.2f}x; "
        f"ratio {speedup / bound:.3f} (target >= 0.97)"
    )


if __name__ == "__main__":
    main()
