"""Every SD1.5 / SDXL / SSD-1B single-file key layout that ComfyUI normalises loads to the same weights.

Each layout is written from the same tiny weights (text encoders with CLIP's real vocabulary, so
no tokenizer files are needed) and loaded through `load_checkpoint`; every tensor of the UNet,
VAE and text encoders must equal, bit for bit, those loaded from the standard layout, which in
turn equal the fixture modules. The layouts are the ones ComfyUI's `supported_models`
(`process_clip_state_dict`), `utils.clip_text_transformers_convert`, `sd.VAE` (diffusers-named
VAE) and `utils.load_torch_file` (pickles) accept, and what its CheckpointSave writes. With
`COMFYUI_PATH` set, ComfyUI itself normalises every layout file and its tensors must equal ours.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lcm_accel.fixtures import tiny_model
from lcm_accel.fixtures.tiny_models import ldm_state_dict
from lcm_accel.runtime.checkpoint_config import CheckpointFormatError
from lcm_accel.runtime.checkpoints import load_checkpoint

SD15_CLIP = "cond_stage_model.transformer."
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."
VAE = "first_stage_model."

State = dict[str, torch.Tensor]


def _state(family: str) -> State:
    return ldm_state_dict(tiny_model(family, clip_vocab=True))


def _save(state: State, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".safetensors", ".sft"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path


def _weights(loaded) -> dict[str, State]:
    model, clip, vae = loaded
    parts = {"unet": model.unet, "vae": vae.vae}
    parts.update({f"text_encoder_{i}": e for i, e in enumerate(clip.text_encoders)})
    return {name: {k.removeprefix("text_model."): v for k, v in m.state_dict().items()} for name, m in parts.items()}


def _assert_same(got: dict[str, State], want: dict[str, State]) -> None:
    assert got.keys() == want.keys()
    for part in want:
        assert got[part].keys() == want[part].keys(), part
        for key, value in want[part].items():
            assert got[part][key].dtype == value.dtype and torch.equal(got[part][key], value), f"{part}: {key}"


# --- layout rewrites: each takes the standard state (and the fixture family) and returns another
# layout of the same weights


def _without_text_model_level(prefix: str) -> Callable[[State, str], State]:
    """Older transformers' CLIPTextModel names (no `text_model.`), as old SD1.5 files have them."""
    return lambda s, family: {k.replace(f"{prefix}text_model.", prefix): v for k, v in s.items()}


def _with_position_ids(prefix: str, dtype: torch.dtype) -> Callable[[State, str], State]:
    def rewrite(state: State, family: str) -> State:
        ids = torch.arange(77, dtype=dtype).expand(1, -1)
        return {**state, f"{prefix}text_model.embeddings.position_ids": ids}

    return rewrite


def _sd15_unused_clip_extras(state: State, family: str) -> State:
    """A text projection and logit scale beside SD1.5's CLIP-L (unused by SD; ComfyUI ignores them)."""
    width = state[f"{SD15_CLIP}text_model.final_layer_norm.weight"].shape[0]
    return {
        **state,
        f"{SD15_CLIP}text_projection.weight": torch.randn(width, width),
        "cond_stage_model.logit_scale": torch.tensor(4.6),
    }


def _diffusers_vae(deprecated_attention: bool) -> Callable[[State, str], State]:
    """The VAE under `first_stage_model.` with diffusers' AutoencoderKL names (what ComfyUI's VAE
    converts when it sees `decoder.up_blocks.0.resnets.0.norm1.weight`); optionally diffusers'
    deprecated attention names with 1x1-conv weights."""

    def rewrite(state: State, family: str) -> State:
        out = {k: v for k, v in state.items() if not k.startswith(VAE)}
        names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        for key, value in tiny_model(family, clip_vocab=True).vae.state_dict().items():
            value = value.detach().clone()
            if deprecated_attention and ".attentions." in key:
                for new, old in names.items():
                    if f".{new}." in key:
                        key = key.replace(f".{new}.", f".{old}.")
                        value = value[:, :, None, None] if key.endswith(".weight") else value
            out[VAE + key] = value
        return out

    return rewrite


def _clip_g_split(state: State, family: str) -> State:
    """OpenCLIP-G already in transformers' layout under `conditioner.embedders.1.model.transformer.`
    with a Linear `text_projection.weight` (ComfyUI maps it to the same model)."""
    out = {k: v for k, v in state.items() if not k.startswith(CLIP_G)}
    for key, value in tiny_model(family, clip_vocab=True).text_encoders[1].state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith("text_model.") or key.startswith("text_projection") else f"text_model.{key}"
        out[f"{CLIP_G}transformer.{key}"] = value.detach().clone()
    return out


def _clip_g_projection_as_linear(state: State, family: str) -> State:
    """`text_projection.weight` (Linear, out x in) instead of OpenCLIP's transposed `text_projection`."""
    out = dict(state)
    out[f"{CLIP_G}text_projection.weight"] = out.pop(f"{CLIP_G}text_projection").T.contiguous()
    return out


def _comfyui_saved_sdxl(state: State, family: str) -> State:
    """What ComfyUI's CheckpointSave writes for SDXL: CLIP-L position ids (int64 arange), OpenCLIP-G
    with its logit scale, standard UNet / VAE names."""
    return {
        **state,
        f"{CLIP_L}text_model.embeddings.position_ids": torch.arange(77).expand(1, -1),
        f"{CLIP_G}logit_scale": torch.tensor(4.6055),
    }


def _cast(state: State, dtype: torch.dtype) -> State:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


LAYOUTS = {
    "sd15": {
        "no_text_model_level": _without_text_model_level(SD15_CLIP),
        "position_ids_int": _with_position_ids(SD15_CLIP, torch.int64),
        "position_ids_float": _with_position_ids(SD15_CLIP, torch.float32),
        "unused_clip_extras": _sd15_unused_clip_extras,
        "diffusers_vae": _diffusers_vae(False),
        "diffusers_vae_deprecated_attention": _diffusers_vae(True),
    },
    "sdxl": {
        "clip_g_split": _clip_g_split,
        "clip_g_projection_linear": _clip_g_projection_as_linear,
        "comfyui_saved": _comfyui_saved_sdxl,
        "diffusers_vae": _diffusers_vae(False),
        "no_text_model_level_clip_l": _without_text_model_level(CLIP_L),
    },
    "ssd1b": {
        "comfyui_saved": _comfyui_saved_sdxl,
        "clip_g_split": _clip_g_split,
    },
}
CASES = [(family, layout) for family, layouts in LAYOUTS.items() for layout in layouts]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict[str, State]]:
    """Each family's standard layout, loaded (with the packaged tokenizer: no tokenizers folder)."""
    root = tmp_path_factory.mktemp("layouts_reference") / "models" / "checkpoints"
    out = {}
    for family in LAYOUTS:
        loaded = load_checkpoint(_save(_state(family), root / f"{family}.safetensors"))
        out[family] = _weights(loaded)
    return out


def test_standard_layout_equals_the_fixture_modules(reference):
    for family, weights in reference.items():
        model = tiny_model(family, clip_vocab=True)
        assert all(torch.equal(weights["unet"][k], v) for k, v in model.unet.state_dict().items())
        assert all(torch.equal(weights["vae"][k], v) for k, v in model.vae.state_dict().items())
        for i, encoder in enumerate(model.text_encoders):
            want = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
            assert all(
                torch.equal(weights[f"text_encoder_{i}"][k], v)
                for k, v in want.items()
                if k in weights[f"text_encoder_{i}"]
            )


def test_clip_vocab_fixtures_share_unet_and_vae_with_the_default_ones():
    """The fixture option for CLIP's vocabulary changes only the text encoders."""
    for family in ("sd15", "sdxl"):
        default, clip = tiny_model(family), tiny_model(family, clip_vocab=True)
        assert clip.text_encoders[0].config.vocab_size == 49408 != default.text_encoders[0].config.vocab_size
        for part in ("unet", "vae"):
            want = getattr(default, part).state_dict()
            assert all(torch.equal(v, want[k]) for k, v in getattr(clip, part).state_dict().items())


@pytest.mark.parametrize("family,layout", CASES)
def test_layout_loads_to_the_same_weights(tmp_path, reference, family, layout):
    path = _save(
        LAYOUTS[family][layout](_state(family), family), tmp_path / "models" / "checkpoints" / f"{layout}.safetensors"
    )
    _assert_same(_weights(load_checkpoint(path)), reference[family])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_exactly(tmp_path, dtype):
    """An fp16 / bf16 file loads (in float32 on the CPU) to exactly the float32 file of the same
    rounded values."""
    rounded = {k: v.to(dtype).float() if v.is_floating_point() else v for k, v in _state("sd15").items()}
    checkpoints = tmp_path / "models" / "checkpoints"
    half = _weights(load_checkpoint(_save(_cast(_state("sd15"), dtype), checkpoints / "half.safetensors")))
    full = _weights(load_checkpoint(_save(rounded, checkpoints / "full.safetensors")))
    _assert_same(half, full)


@pytest.mark.parametrize(
    "wrap,suffix",
    [
        (lambda s: {"state_dict": s, "global_step": 470000, "epoch": 6}, ".ckpt"),  # PyTorch Lightning
        (lambda s: {"model": s}, ".pt"),  # one dict inside (ComfyUI unwraps it)
        (lambda s: {**s, "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5)}, ".ckpt"),
        (lambda s: s, ".sft"),
    ],
)
def test_pickles_and_other_containers(tmp_path, reference, wrap, suffix):
    path = _save(wrap(_state("sd15")), tmp_path / "models" / "checkpoints" / f"model{suffix}")
    _assert_same(_weights(load_checkpoint(path)), reference["sd15"])


def test_lightning_training_checkpoint_with_callbacks_and_numpy_scalars(tmp_path, reference, monkeypatch):
    """A training `.ckpt` (as sd-v1-4.ckpt) pickles Lightning's ModelCheckpoint callback and numpy
    scalars beside the weights; ComfyUI allows those for weights_only loading, so does the loader."""
    import sys
    import types

    import numpy

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = numpy.float64(0.25)
            self.monitor = "val/loss"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__)
    for name in names:  # a stand-in package, so that pickle can name the class
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    data = {
        "state_dict": _state("sd15"),
        "global_step": numpy.int64(470000),
        "epoch": 6,
        "callbacks": {"ModelCheckpoint": ModelCheckpoint()},
        "pytorch-lightning_version": "1.4.2",
    }
    path = _save(data, tmp_path / "models" / "checkpoints" / "sd-v1-4.ckpt")
    for name in names:  # the user has no pytorch_lightning
        monkeypatch.delitem(sys.modules, name)
    _assert_same(_weights(load_checkpoint(path)), reference["sd15"])


def test_pickled_code_is_still_refused(tmp_path):
    """weights_only stays on: a pickle that calls anything else is refused, naming the file."""

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = _save({"state_dict": _state("sd15"), "payload": Evil()}, tmp_path / "models" / "checkpoints" / "evil.ckpt")
    with pytest.raises(CheckpointFormatError, match="evil.ckpt: not a readable checkpoint"):
        load_checkpoint(path)


def test_v_pred_marker_sets_v_prediction(tmp_path):
    """ComfyUI's CheckpointSave writes an empty `v_pred` tensor for v-prediction models."""
    checkpoints = tmp_path / "models" / "checkpoints"
    model, _, _ = load_checkpoint(
        _save({**_state("sd15"), "v_pred": torch.tensor([])}, checkpoints / "vpred.safetensors")
    )
    assert model.prediction_type == "v_prediction" and model.sampling_type == "v_prediction"
    model, _, _ = load_checkpoint(_save(_state("sd15"), checkpoints / "eps.safetensors"))
    assert model.prediction_type == "epsilon"


@pytest.mark.parametrize(
    "rewrite,message",
    [
        (lambda s: {k.replace(SD15_CLIP, "cond_stage_model.model."): v for k, v in s.items()}, "SD2.x"),
        (lambda s: {k: v for k, v in s.items() if not k.startswith(VAE)}, "first_stage_model"),
        (lambda s: {k: v for k, v in s.items() if "token_embedding" not in k}, "token embedding"),
    ],
)
def test_unsupported_layouts_name_the_file(tmp_path, rewrite, message):
    path = _save(rewrite(_state("sd15")), tmp_path / "models" / "checkpoints" / "odd.safetensors")
    with pytest.raises(CheckpointFormatError, match=f"odd.safetensors.*{message}"):
        load_checkpoint(path)


# --- ComfyUI's own normalisation of the same files (when COMFYUI_PATH names a checkout)

COMFYUI_NORMALISE = r"""
import sys
comfyui, out, *jobs = sys.argv[1:]
sys.path.insert(0, comfyui)
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.diffusers_convert
import comfy.supported_models
import comfy.utils
from safetensors.torch import save_file

for index, (path, family) in enumerate(zip(jobs[::2], jobs[1::2])):
    state = comfy.utils.load_torch_file(path)
    config = comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL
    clip = config.process_clip_state_dict(None, dict(state))  # the methods use no instance state
    vae = comfy.utils.state_dict_prefix_replace(dict(state), {"first_stage_model.": ""}, filter_keys=True)
    if "decoder.up_blocks.0.resnets.0.norm1.weight" in vae:
        vae = comfy.diffusers_convert.convert_vae_state_dict(vae)
    tensors = {"clip." + k: v for k, v in clip.items()}
    tensors.update({"vae." + k: v for k, v in vae.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/{index}.safetensors")
"""
# layouts we read that ComfyUI drops an encoder of (its SDXL loader maps CLIP-L only with `text_model.`)
BEYOND_COMFYUI = {("sdxl", "no_text_model_level_clip_l"): {"text_encoder_0"}}
COMFY_ENCODERS = {
    "clip_l.transformer.text_model.": "text_encoder_0",
    "clip_g.transformer.text_model.": "text_encoder_1",
    "clip_g.transformer.": "text_encoder_1",
}


@pytest.fixture
def comfyui() -> tuple[Path, str]:
    """(ComfyUI checkout, its Python) from `COMFYUI_PATH` / `COMFYUI_PYTHON`, or skip the test."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from comfyui_server import comfyui_checkout, comfyui_python

    checkout, why = comfyui_checkout()
    if checkout is None:
        pytest.skip(why)
    return checkout, comfyui_python(checkout)


def _comfyui_normalised(comfyui: tuple[Path, str], files: list[tuple[Path, str]], out: Path) -> list[State]:
    """ComfyUI's `process_clip_state_dict` / VAE conversion of each (file, family), run in its Python."""
    import subprocess

    checkout, python = comfyui
    out.mkdir()
    jobs = [str(x) for path, family in files for x in (path, family)]
    command = [python, "-c", COMFYUI_NORMALISE, str(checkout), str(out), *jobs]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if "No module named" in result.stderr and result.returncode:
        pytest.skip(f"ComfyUI's Python cannot import it: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    return [load_file(str(out / f"{i}.safetensors")) for i in range(len(files))]


def _comfy_encoder_weights(normalised: State) -> dict[str, State]:
    """ComfyUI's text-encoder tensors under our encoders' names (position ids and logit scales,
    which our encoders compute or do not have, left out)."""
    out: dict[str, State] = {}
    for key, value in normalised.items():
        key = key.removeprefix("clip.")
        prefix = next((p for p in COMFY_ENCODERS if key.startswith(p)), None)
        if prefix is None or key.endswith("position_ids"):
            continue
        out.setdefault(COMFY_ENCODERS[prefix], {})[key[len(prefix) :]] = value
    return out


def test_comfyui_normalises_each_layout_to_the_weights_we_load(comfyui, tmp_path, reference):
    """Each layout, normalised by ComfyUI itself, gives the text-encoder tensors we load, and the VAE
    tensors ComfyUI reads from the standard layout."""
    files = []
    for family, layout in CASES:
        path = tmp_path / "models" / "checkpoints" / f"{family}_{layout}.safetensors"
        files.append(
            (_save(LAYOUTS[family][layout](_state(family), family), path), "sd15" if family == "sd15" else "sdxl")
        )
    normalised = _comfyui_normalised(comfyui, files, tmp_path / "comfyui")
    for (family, layout), theirs in zip(CASES, normalised):
        encoders = _comfy_encoder_weights(theirs)
        expected = {k for k in reference[family] if k.startswith("text_encoder")} - BEYOND_COMFYUI.get(
            (family, layout), set()
        )
        assert encoders.keys() == expected, (family, layout)
        for encoder, tensors in encoders.items():
            ours = reference[family][encoder]
            extra = tensors.keys() - ours.keys()  # SD's CLIP-L has no projection (ComfyUI ignores it)
            assert ours.keys() <= tensors.keys() and extra <= {"text_projection.weight"}, (family, layout, encoder)
            for key, value in ((k, v) for k, v in tensors.items() if k in ours):
                assert torch.equal(ours[key], value.to(ours[key].dtype)), (family, layout, encoder, key)
        standard_vae = {k.removeprefix(VAE): v for k, v in _state(family).items() if k.startswith(VAE)}
        vae = {k.removeprefix("vae."): v for k, v in theirs.items() if k.startswith("vae.")}
        assert vae.keys() == standard_vae.keys(), (family, layout)
        assert all(torch.equal(v.reshape(-1), standard_vae[k].reshape(-1)) for k, v in vae.items()), (family, layout)
