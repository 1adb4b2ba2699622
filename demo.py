"""`python -m lcm_accel demo`: run the SD1.5 LCM-LoRA workflow headless and write a PNG.

With no `--models`, the workflow runs on tiny built-in stand-ins of the files it names (random
weights in the real file layouts, written once to the user's cache), so the demo works on a
machine with no weights and no network; the image is then noise-like by nature. With
`--models DIR` (a ComfyUI models folder holding v1-5-pruned-emaonly.safetensors and
lcm-lora-sdv1-5.safetensors; the CLIP tokenizer ships with the pack) it is the real 4-step
LCM-LoRA generation.
"""
from __future__ import annotations

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent
DEFAULT_WORKFLOW = PACK_ROOT / "workflows" / "lcm_lora_txt2img.json"


def demo_run_arguments(models: str | None, out: str, workflow: str | None = None) -> list[str]:
    """The `python -m lcm_accel run ...` arguments the demo stands for."""
    args = ["run", str(workflow or DEFAULT_WORKFLOW), "--out", out]
    if models:
        return args + ["--models", models]
    from .fixtures.demo_models import demo_models_dir

    root = demo_models_dir()
    print(f"no --models given: using the tiny built-in stand-in models in {root}")
    return args + ["--models", str(root / "models"), "--input", str(root / "input")]
