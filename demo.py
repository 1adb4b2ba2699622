"""`python -m lcm_accel demo`: run the SD1.5 LCM-LoRA workflow headless and write a PNG.

With no `--models`, the workflows run on the embedded model the project trains and ships
(`embedded/`: a tiny SD1.5-architecture model of a world of coloured shapes, its LCM-LoRA and a
style LoRA), at its native 64x64 size: the demo writes the 4-step LCM-LoRA picture and a contact
sheet beside it (teacher, base 4 steps, LCM-LoRA, LCM-LoRA + style), so the first run shows a real
picture. With `--models DIR` (a ComfyUI models folder holding v1-5-pruned-emaonly.safetensors and
lcm-lora-sdv1-5.safetensors; the CLIP tokenizer ships with the pack) it is the real 4-step
LCM-LoRA generation.
"""

from __future__ import annotations

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent
DEFAULT_WORKFLOW = PACK_ROOT / "example_workflows" / "lcm_lora_txt2img.json"


def demo_run_arguments(models: str | None, out: str, workflow: str | None = None) -> list[str]:
    """The `python -m lcm_accel run ...` arguments the demo stands for."""
    args = ["run", str(workflow or DEFAULT_WORKFLOW), "--out", out]
    if models:
        return args + ["--models", models]
    from .fixtures.demo_models import demo_models_dir

    root = demo_models_dir()
    print(f"no --models given: using the tiny built-in stand-in models in {root}")
    return args + ["--models", str(root / "models"), "--input", str(root / "input")]


def run_demo(models: str | None, out: str, workflow: str | None, prompt: str | None, run_cli) -> int:
    """The demo: with `models` (or another `workflow`) one `run` through `run_cli(argv)`;
    otherwise the embedded model's demo (`embedded.demo`)."""
    if models:
        return run_cli(demo_run_arguments(models, out, workflow))
    from .embedded import RESOLUTION
    from .embedded.demo import DEFAULT_PROMPT, run_embedded_demo
    from .embedded.models_dir import embedded_models_dir

    if workflow is None:
        return run_embedded_demo(out, prompt or DEFAULT_PROMPT)
    root = embedded_models_dir()
    print(f"no --models given: running {workflow} on the embedded model ({root}) at {RESOLUTION}x{RESOLUTION}")
    args = ["run", workflow, "--out", out, "--models", str(root / "models"), "--input", str(root / "input")]
    return run_cli(args + _size_overrides(workflow, root / "models"))


def _size_overrides(workflow: str, models: Path) -> list[str]:
    """`--set` assignments giving every EmptyLatentImage of `workflow` the embedded model's size."""
    from .embedded import RESOLUTION
    from .harness.registry import default_registry
    from .harness.runner import api_prompt
    from .harness.workflow_io import load_workflow
    from .runtime.model_paths import ModelPaths, use_model_paths

    with use_model_paths(ModelPaths(models)):  # a UI workflow's conversion reads the model lists
        prompt, _ = api_prompt(load_workflow(workflow), default_registry())
    return [
        f"--set={node_id}.{side}={RESOLUTION}"
        for node_id, node in prompt.items()
        if node.get("class_type") == "EmptyLatentImage"
        for side in ("width", "height")
    ]
