"""The embedded model: a tiny SD1.5-architecture text-to-image model trained by the project.

It is trained (`python -m lcm_accel.embedded.build`) on a procedural captioned-image world
(`world.py`) and shipped in `files/`: the base checkpoint (LDM single file), its LCM-LoRA (distilled
by `python -m lcm_accel train lcm-lora`), a style LoRA and a scorer that reads shape / colour /
position / style back from an image. Its pictures mean something, so the demo shows a real picture
and the benchmarks measure the papers' claims on it.
"""

from __future__ import annotations

from pathlib import Path

FILES = Path(__file__).resolve().parent / "files"
BASE_FILE = "embedded-sd15-base.safetensors"
LCM_LORA_FILE = "embedded-lcm-lora.safetensors"
STYLE_LORA_FILE = "embedded-style-lora.safetensors"
SCORER_FILE = "embedded-scorer.safetensors"
BUILD_INFO_FILE = "build_info.json"
RESOLUTION = 64  # pixels; latents are 8x8


def shipped_file(name: str) -> Path:
    """The path of a shipped file; refuses, with the rebuild command, when it is missing."""
    path = FILES / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the embedded model file {path} is missing: rebuild it with "
            "`python -m lcm_accel.embedded.build` (or restore it from the repository)"
        )
    return path
