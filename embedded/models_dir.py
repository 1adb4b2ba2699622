"""A ComfyUI models folder in which the example workflows' file names hold the embedded model.

`checkpoints/v1-5-pruned-emaonly.safetensors` is the embedded base, `loras/lcm-lora-sdv1-5.safetensors`
its LCM-LoRA and `loras/style-lora-sd15.safetensors` its style LoRA, so `example_workflows/*.json` run on it
unchanged (at the model's native 64x64 size). The SDXL names hold the tiny random stand-ins (there is
no embedded SDXL). Written once per version of the shipped files to the user's cache.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from . import BASE_FILE, FILES, LCM_LORA_FILE, RESOLUTION, STYLE_LORA_FILE, shipped_file

EMBEDDED_NAMES = {
    ("checkpoints", "v1-5-pruned-emaonly.safetensors"): BASE_FILE,
    ("loras", "lcm-lora-sdv1-5.safetensors"): LCM_LORA_FILE,
    ("loras", "style-lora-sd15.safetensors"): STYLE_LORA_FILE,
}


def write_embedded_models_dir(root: str | Path, files: Path = FILES, sdxl: bool = True) -> Path:
    """Write `root/models/...` (the embedded files under the workflows' names and, with `sdxl`, SDXL
    stand-ins with CLIP's real vocabulary, so no `tokenizers/` folder is needed),
    `root/input/example.png` (64x64) and `root/output/`; returns `root`."""
    from ..fixtures.cache import tiny_model
    from ..fixtures.demo_models import LORAS, write_example_image
    from ..fixtures.tiny_loras import lora_targets, random_factors, write_kohya
    from ..fixtures.tiny_models import save_ldm_checkpoint

    root = Path(root)
    models = root / "models"
    for (folder, name), source in EMBEDDED_NAMES.items():
        target = models / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped_file(source) if files == FILES else files / source, target)
    if sdxl:
        save_ldm_checkpoint(
            tiny_model("sdxl", 0, clip_vocab=True), models / "checkpoints" / "sd_xl_base_1.0.safetensors"
        )
        name = "lcm-lora-sdxl.safetensors"
        _, rank, _, lora_seed = LORAS[name]
        factors = random_factors(lora_targets(tiny_model("sdxl", 0).unet), rank, seed=lora_seed, scale=0.05)
        write_kohya(models / "loras" / name, factors, alpha=float(rank))
    write_example_image(root / "input" / "example.png", (RESOLUTION, RESOLUTION))
    (root / "output").mkdir(parents=True, exist_ok=True)
    return root


def _files_key(files: Path) -> str:
    digest = hashlib.sha256()
    for source in sorted(EMBEDDED_NAMES.values()):
        stat = (files / source).stat()
        digest.update(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def embedded_models_dir(files: Path = FILES) -> Path:
    """The embedded models folder in the user's cache, written once per version of the files."""
    if files == FILES:
        for source in EMBEDDED_NAMES.values():
            shipped_file(source)  # a missing file is refused with the rebuild command
    from ..fixtures.cache import user_cache_folder

    return user_cache_folder(
        f"embedded-models-{_files_key(files)}",
        lambda root: write_embedded_models_dir(root, files),
        "lcm_accel.embedded.models_dir",
    )
