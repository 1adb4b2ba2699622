"""LoRA loader nodes (ComfyUI's LoraLoader and LoraLoaderModelOnly) on the standalone host.

The nodes only record the LoRA on clones of MODEL / CLIP (see `lora.py`); the shared weights
are patched when a sampler or text encoder runs. The file is checked against the model when
the node runs, so a LoRA for another model family fails here, naming the file.
"""

from __future__ import annotations


def _model_paths():
    from ...runtime.model_paths import get_model_paths

    return get_model_paths()


class LoraLoader:
    """Apply a LoRA to the diffusion model and the CLIP text encoder(s), with separate strengths."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
                "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
                "lora_name": (_model_paths().get_filename_list("loras"), {"tooltip": "The name of the LoRA."}),
                "strength_model": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -100.0,
                        "max": 100.0,
                        "step": 0.01,
                        "tooltip": "How strongly to modify the diffusion model. This value can be negative.",
                    },
                ),
                "strength_clip": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -100.0,
                        "max": 100.0,
                        "step": 0.01,
                        "tooltip": "How strongly to modify the CLIP model. This value can be negative.",
                    },
                ),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The modified diffusion model.", "The modified CLIP model.")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"
    DESCRIPTION = (
        "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised "
        "such as applying styles. Multiple LoRA nodes can be linked together."
    )

    def load_lora(self, model, clip, lora_name: str, strength_model: float, strength_clip: float):
        """(MODEL, CLIP) clones with the LoRA recorded; a zero strength leaves that input unchanged."""
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        from ...runtime.lora_state import add_clip_loras, add_loras, load_lora_file

        lora = load_lora_file(lora_name)
        new_model = add_loras(model, [(lora, strength_model)]) if model is not None and strength_model != 0 else model
        new_clip = add_clip_loras(clip, [(lora, strength_clip)]) if clip is not None and strength_clip != 0 else clip
        return (new_model, new_clip)


class LoraLoaderModelOnly(LoraLoader):
    """Apply a LoRA to the diffusion model only."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (_model_paths().get_filename_list("loras"),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The modified diffusion model.",)
    FUNCTION = "load_lora_model_only"

    def load_lora_model_only(self, model, lora_name: str, strength_model: float):
        """A MODEL clone with the LoRA recorded (strength 0: the input MODEL)."""
        return (self.load_lora(model, None, lora_name, strength_model, 0)[0],)
