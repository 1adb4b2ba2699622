"""ComfyUI's folder layout: listing, legacy names, refusing names that escape their folder,
output counters and the current-paths global node code reads."""

from __future__ import annotations

import os

import pytest

from lcm_accel.runtime.errors import RunError
from lcm_accel.runtime.model_paths import (
    ModelNotFoundError,
    ModelPathError,
    ModelPaths,
    get_model_paths,
    set_model_paths,
    use_model_paths,
)


@pytest.fixture
def paths(tmp_path):
    models = tmp_path / "models"
    for rel in [
        "checkpoints/sd15.safetensors",
        "checkpoints/sub/dir/xl.ckpt",
        "checkpoints/readme.txt",
        "loras/lcm.safetensors",
        "clip/te.safetensors",
        "text_encoders/t5.safetensors",
        "unet/u.safetensors",
        "diffusion_models/d.sft",
        "diffusers/tiny/model_index.json",
        "diffusers/tiny/unet/config.json",
        "configs/v1.yaml",
    ]:
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"s")
    return ModelPaths(models)


def test_lists_recursively_sorted_with_comfyui_extensions_and_legacy_names(paths):
    assert paths.get_filename_list("checkpoints") == ["sd15.safetensors", "sub/dir/xl.ckpt"]
    assert (
        paths.get_filename_list("clip")
        == paths.get_filename_list("text_encoders")
        == ["t5.safetensors", "te.safetensors"]
    )
    assert paths.get_filename_list("unet") == ["d.sft", "u.safetensors"]
    assert paths.get_filename_list("diffusers") == ["tiny"]
    assert paths.get_filename_list("configs") == ["v1.yaml"]
    assert paths.get_filename_list("embeddings") == []  # missing folder: nothing, no error
    assert paths.get_full_path("checkpoints", "sub/dir/xl.ckpt") == paths.models_dir / "checkpoints/sub/dir/xl.ckpt"
    assert paths.get_full_path("checkpoints", "sub\\dir\\xl.ckpt").name == "xl.ckpt"  # Windows-saved names
    with pytest.raises(ModelPathError, match="unknown model folder 'checkpoint'"):
        paths.get_filename_list("checkpoint")


@pytest.mark.parametrize(
    "name",
    [
        "../../secret.safetensors",
        "/etc/passwd",
        "sub/../../secret.safetensors",
        "C:\\models\\x.safetensors",
        "..\\secret.safetensors",
    ],
)
def test_names_escaping_the_folder_are_refused(paths, name):
    with pytest.raises(ModelPathError, match="outside its folder"):
        paths.get_full_path("checkpoints", name)


def test_symlinks_pointing_outside_are_refused_and_not_listed(paths, tmp_path):
    link = paths.models_dir / "checkpoints" / "linked.safetensors"
    os.symlink(tmp_path / "secret.safetensors", link)
    os.symlink(
        paths.models_dir / "checkpoints" / "sd15.safetensors", paths.models_dir / "checkpoints" / "alias.safetensors"
    )
    with pytest.raises(ModelPathError, match="outside the checkpoints folder"):
        paths.get_full_path("checkpoints", "linked.safetensors")
    assert "linked.safetensors" not in paths.get_filename_list("checkpoints")
    assert paths.get_full_path("checkpoints", "alias.safetensors").name == "sd15.safetensors"  # inside: fine


def test_missing_file_lists_what_is_available(paths):
    with pytest.raises(
        ModelNotFoundError, match="'nope.safetensors' not found.*available: sd15.safetensors, sub/dir/xl.ckpt"
    ):
        paths.get_full_path("checkpoints", "nope.safetensors")
    with pytest.raises(ModelNotFoundError):
        paths.get_full_path("checkpoints", "readme.txt")  # present but not a model file


def test_input_files_and_save_counter(paths, tmp_path):
    assert paths.input_dir == tmp_path / "input" and paths.output_dir == tmp_path / "output"
    paths.input_dir.mkdir()
    (paths.input_dir / "cat.png").write_bytes(b"p")
    assert paths.list_input_files() == ["cat.png"]
    assert paths.get_input_path("cat.png") == paths.input_dir / "cat.png"
    with pytest.raises(ModelPathError):
        paths.get_input_path("../models/loras/lcm.safetensors")
    first = paths.get_save_path("run/img")
    assert first == paths.output_dir / "run" / "img_00001_.png"
    first.write_bytes(b"")
    (paths.output_dir / "run" / "img_00007_.png").write_bytes(b"")
    assert paths.get_save_path("run/img").name == "img_00008_.png"
    assert paths.get_save_path("other").name == "other_00001_.png"
    with pytest.raises(ModelPathError):
        paths.get_save_path("../escape")


def test_current_paths_are_set_and_restored(paths, tmp_path):
    set_model_paths(None)
    with pytest.raises(RunError, match="no models folder is set"):
        get_model_paths()
    other = ModelPaths(tmp_path / "elsewhere")
    with use_model_paths(paths):
        assert get_model_paths() is paths
        with use_model_paths(other):
            assert get_model_paths() is other
        assert get_model_paths() is paths
    with pytest.raises(RunError):
        get_model_paths()
