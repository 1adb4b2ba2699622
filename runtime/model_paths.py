"""Model, input and output folders laid out and named as ComfyUI names them (its
`folder_paths`), plus the "current paths" that node code reads.

`ModelPaths(models_dir)` knows `models/checkpoints`, `models/loras`, ... with ComfyUI's
legacy names (`clip` -> text_encoders, `unet` -> diffusion_models) and per-folder file
extensions. Every name coming from a workflow goes through `get_full_path`, which refuses
names that escape their folder (`../x`, absolute paths, symlinks pointing outside).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import RunError

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
DIFFUSERS_MARKER = "model_index.json"  # a diffusers model is a folder holding this file

# folder name -> (sub-folders of models/, accepted extensions); as ComfyUI's folder_paths.
FOLDERS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "checkpoints": (("checkpoints",), MODEL_EXTENSIONS),
    "configs": (("configs",), frozenset({".yaml"})),
    "loras": (("loras",), MODEL_EXTENSIONS),
    "vae": (("vae",), MODEL_EXTENSIONS),
    "text_encoders": (("text_encoders", "clip"), MODEL_EXTENSIONS),
    "diffusion_models": (("unet", "diffusion_models"), MODEL_EXTENSIONS),
    "clip_vision": (("clip_vision",), MODEL_EXTENSIONS),
    "style_models": (("style_models",), MODEL_EXTENSIONS),
    "embeddings": (("embeddings",), MODEL_EXTENSIONS),
    "diffusers": (("diffusers",), frozenset()),  # folders, see DIFFUSERS_MARKER
    "vae_approx": (("vae_approx",), MODEL_EXTENSIONS),
    "controlnet": (("controlnet", "t2i_adapter"), MODEL_EXTENSIONS),
    "gligen": (("gligen",), MODEL_EXTENSIONS),
    "upscale_models": (("upscale_models",), MODEL_EXTENSIONS),
    "latent_upscale_models": (("latent_upscale_models",), MODEL_EXTENSIONS),
    "hypernetworks": (("hypernetworks",), MODEL_EXTENSIONS),
    "photomaker": (("photomaker",), MODEL_EXTENSIONS),
    "classifiers": (("classifiers",), frozenset({""})),
    "model_patches": (("model_patches",), MODEL_EXTENSIONS),
    "audio_encoders": (("audio_encoders",), MODEL_EXTENSIONS),
}
LEGACY_NAMES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}


class ModelPathError(RunError, ValueError):
    """A file name that is not allowed: it escapes its folder, or the folder is unknown."""


class ModelNotFoundError(RunError, FileNotFoundError):
    """A file name that is allowed but absent; the message lists what is available."""


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_relative_name(kind: str, name: str) -> PurePosixPath:
    """Refuse absolute names, drive letters and `..` parts; return the name as a relative path."""
    if not isinstance(name, str) or not name.strip():
        raise ModelPathError(f"{kind} file name must be a non-empty string, got {name!r}")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise ModelPathError(
            f"{kind} file name {name!r} is outside its folder: use a name relative to the folder, "
            "without '..' or a leading '/'"
        )
    return posix


class ModelPaths:
    """Where models, inputs and outputs live for one run (ComfyUI's folder layout)."""

    def __init__(
        self,
        models_dir: str | os.PathLike,
        input_dir: str | os.PathLike | None = None,
        output_dir: str | os.PathLike | None = None,
    ):
        self.models_dir = Path(models_dir).expanduser().absolute()
        base = self.models_dir.parent
        self.input_dir = Path(input_dir).expanduser().absolute() if input_dir else base / "input"
        self.output_dir = Path(output_dir).expanduser().absolute() if output_dir else base / "output"

    def __repr__(self) -> str:
        return f"ModelPaths({str(self.models_dir)!r}, input_dir={str(self.input_dir)!r}, output_dir={str(self.output_dir)!r})"

    # -- models ---------------------------------------------------------------------------
    def folder_dirs(self, folder: str) -> list[Path]:
        """The directories searched for `folder` (ComfyUI folder name or legacy alias)."""
        key = LEGACY_NAMES.get(folder, folder)
        if key not in FOLDERS:
            raise ModelPathError(
                f"unknown model folder {folder!r}; known: {', '.join(sorted(FOLDERS) + sorted(LEGACY_NAMES))}"
            )
        return [self.models_dir / sub for sub in FOLDERS[key][0]]

    def _accepts(self, folder: str, path: Path) -> bool:
        extensions = FOLDERS[LEGACY_NAMES.get(folder, folder)][1]
        if folder == "diffusers":
            return path.is_dir() and (path / DIFFUSERS_MARKER).is_file()
        return path.is_file() and ("" in extensions or path.suffix.lower() in extensions)

    def get_filename_list(self, folder: str) -> list[str]:
        """Every usable file of `folder`: recursive, sorted, forward-slash names relative to
        the folder, filtered by ComfyUI's extensions for it; entries whose real location is
        outside the folder (symlinks) are left out, as `get_full_path` would refuse them."""
        names: set[str] = set()
        for root in self.folder_dirs(folder):
            if not root.is_dir():
                continue
            real_root = root.resolve()
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames.sort()
                here = Path(dirpath)
                entries = dirnames if folder == "diffusers" else filenames
                for entry in entries:
                    path = here / entry
                    if self._accepts(folder, path) and _is_inside(path.resolve(), real_root):
                        names.add(path.relative_to(root).as_posix())
        return sorted(names)

    def get_full_path(self, folder: str, name: str) -> Path:
        """The real path of `name` in `folder`; refuses names escaping the folder and names
        that do not exist (listing what is available)."""
        relative = _check_relative_name(folder, name)
        roots = self.folder_dirs(folder)
        for root in roots:
            candidate = root / relative
            if not candidate.exists() and not candidate.is_symlink():
                continue
            real = candidate.resolve()
            if not _is_inside(real, root.resolve()):
                raise ModelPathError(f"{folder} file {name!r} resolves to {real}, outside the {folder} folder {root}")
            if self._accepts(folder, candidate):
                return real
        available = self.get_filename_list(folder)
        shown = ", ".join(available[:20]) + (f", ... ({len(available)} in all)" if len(available) > 20 else "")
        raise ModelNotFoundError(
            f"{folder} file {name!r} not found in {', '.join(str(r) for r in roots)}; "
            + (f"available: {shown}" if available else "that folder has no usable files")
        )

    # -- input / output -------------------------------------------------------------------
    def list_input_files(self) -> list[str]:
        """Files directly in the input folder (what ComfyUI's LoadImage offers), sorted."""
        if not self.input_dir.is_dir():
            return []
        return sorted(p.name for p in self.input_dir.iterdir() if p.is_file())

    def get_input_path(self, name: str) -> Path:
        """The real path of `name` in the input folder; refuses escapes and missing files."""
        relative = _check_relative_name("input", name)
        candidate = self.input_dir / relative
        real = candidate.resolve()
        if not _is_inside(real, self.input_dir.resolve()):
            raise ModelPathError(f"input file {name!r} resolves to {real}, outside the input folder {self.input_dir}")
        if not real.is_file():
            available = self.list_input_files()
            raise ModelNotFoundError(
                f"input file {name!r} not found in {self.input_dir}; "
                + (f"available: {', '.join(available[:20])}" if available else "the input folder is empty")
            )
        return real

    def get_save_path(self, prefix: str, extension: str = "png") -> Path:
        """The next free `output/<prefix>_NNNNN_.<extension>` (ComfyUI's counter); `prefix`
        may hold sub-folders ("run1/img"), which are created, but may not leave the output folder.
        The counter is one above the highest existing one, so write the file before asking again."""
        relative = _check_relative_name("output", prefix)
        target_dir = (self.output_dir / relative).parent
        if not _is_inside(target_dir.resolve(), self.output_dir.resolve()):
            raise ModelPathError(f"output prefix {prefix!r} points outside the output folder {self.output_dir}")
        stem = relative.name
        target_dir.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(stem) + r"_(\d+)_")
        counters = [int(m.group(1)) for p in target_dir.iterdir() if (m := pattern.match(p.name))]
        counter = max(counters, default=0) + 1
        return target_dir / f"{stem}_{counter:05}_.{extension.lstrip('.')}"


_current: ModelPaths | None = None


def set_model_paths(paths: ModelPaths | None) -> None:
    """Make `paths` the folders node code sees through `get_model_paths()` (None: unset)."""
    global _current
    if paths is not None and not isinstance(paths, ModelPaths):
        raise TypeError(f"set_model_paths expects a ModelPaths, got {type(paths).__name__}")
    _current = paths


def get_model_paths() -> ModelPaths:
    """The folders of the current run, as set by the executor or the command line."""
    if _current is None:
        raise RunError(
            "no models folder is set: run through `python -m lcm_accel run --models DIR`, or call "
            "harness.model_paths.set_model_paths(ModelPaths(DIR)) / use_model_paths(...) first"
        )
    return _current


@contextlib.contextmanager
def use_model_paths(paths: ModelPaths) -> Iterator[ModelPaths]:
    """Make `paths` current inside the block, restoring the previous ones afterwards."""
    previous = _current
    set_model_paths(paths)
    try:
        yield paths
    finally:
        set_model_paths(previous)
