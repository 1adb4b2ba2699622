"""Checkpoint loader nodes (ComfyUI's CheckpointLoaderSimple and DiffusersLoader)."""

from __future__ import annotations


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
