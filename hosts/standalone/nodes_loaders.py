"""Loader nodes (ComfyUI's CheckpointLoaderSimple, DiffusersLoader, VAELoader, UNETLoader)."""

from __future__ import annotations

from pathlib import Path


def _model_paths():
    from ...runtime.model_paths import get_model_paths

    return get_model_paths()


class CheckpointLoaderSimple:
    """MODEL, CLIP and VAE from a single-file SD1.5 / SDXL checkpoint in models/checkpoints."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (
                    _model_paths().get_filename_list("checkpoints"),
                    {"tooltip": "The name of the checkpoint (model) to load."},
                ),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The model used for denoising latents.",
        "The CLIP model used for encoding text prompts.",
        "The VAE model used for encoding and decoding images to and from latent space.",
    )
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name: str):
        from ...runtime.checkpoints import load_checkpoint

        return load_checkpoint(_model_paths().get_full_path("checkpoints", ckpt_name))


class DiffusersLoader:
    """MODEL, CLIP and VAE from a diffusers folder (model_index.json) in models/diffusers."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_path": (_model_paths().get_filename_list("diffusers"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "advanced/loaders/deprecated"

    def load_checkpoint(self, model_path: str, output_vae: bool = True, output_clip: bool = True):
        from ...runtime.checkpoints import load_checkpoint

        return load_checkpoint(_model_paths().get_full_path("diffusers", model_path))


TAESD_NAMES = ("taesd", "taesdxl")  # the TAESD pairs VAELoader offers (SD1.5's and SDXL's)


def _taesd_files(name: str) -> tuple[str | None, str | None]:
    """The (encoder, decoder) files of a TAESD pair in models/vae_approx, None where missing."""
    files = _model_paths().get_filename_list("vae_approx")
    found = [
        next((f for f in files if Path(f).name.startswith(f"{name}_{part}.")), None) for part in ("encoder", "decoder")
    ]
    return found[0], found[1]


def vae_names() -> list[str]:
    """VAELoader's choices: the files in models/vae, then each TAESD pair whose encoder and decoder
    are both in models/vae_approx (as ComfyUI lists them)."""
    names = list(_model_paths().get_filename_list("vae"))
    return names + [name for name in TAESD_NAMES if None not in _taesd_files(name)]


class VAELoader:
    """VAE from models/vae, or a TAESD tiny autoencoder ("taesd", "taesdxl") from models/vae_approx."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (vae_names(),)}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "loaders"

    def load_vae(self, vae_name: str):
        from ...runtime.part_files import load_taesd, load_vae_file

        paths = _model_paths()
        if vae_name in TAESD_NAMES:
            encoder, decoder = _taesd_files(vae_name)
            if encoder is None or decoder is None:
                raise FileNotFoundError(
                    f"VAELoader: vae_name {vae_name!r} needs {vae_name}_encoder.* and {vae_name}_decoder.* "
                    "in models/vae_approx"
                )
            full = paths.get_full_path
            return (load_taesd(vae_name, full("vae_approx", encoder), full("vae_approx", decoder)),)
        if vae_name in ("taesd3", "taef1", "pixel_space"):
            raise ValueError(f"VAELoader: vae_name {vae_name!r} is not for SD1.5 / SDXL; the standalone host lacks it")
        return (load_vae_file(paths.get_full_path("vae", vae_name)),)


UNET_WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


class UNETLoader:
    """MODEL from a UNet-only file in models/diffusion_models (SD1.5 or SDXL, LDM names)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet_name": (_model_paths().get_filename_list("diffusion_models"),),
                "weight_dtype": (UNET_WEIGHT_DTYPES,),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "advanced/loaders"

    def load_unet(self, unet_name: str, weight_dtype: str = "default"):
        from ...runtime.part_files import load_unet_file

        if weight_dtype != "default":
            raise ValueError(
                f"UNETLoader: weight_dtype {weight_dtype!r} is not supported by the standalone host (only "
                "'default'); for 8-bit weights use the pack's quantize node or --dtype"
            )
        return (load_unet_file(_model_paths().get_full_path("diffusion_models", unet_name)),)
