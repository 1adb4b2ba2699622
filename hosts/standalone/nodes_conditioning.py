"""Text conditioning nodes (ComfyUI's CLIPTextEncode and CLIPSetLastLayer)."""

from __future__ import annotations


class CLIPTextEncode:
    """CONDITIONING from a prompt, with ComfyUI's `(emphasis:1.2)` syntax."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}),
                "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip, text: str):
        from ...runtime.text_encoding import encode_prompt

        if clip is None:
            raise RuntimeError(
                "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your "
                "checkpoint does not contain a valid clip or text encoder model."
            )
        cond, pooled = encode_prompt(clip, text)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer:
    """Clip skip: take the text encoder's output from an earlier layer (-1 = last)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP",),
                "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1}),
            }
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "conditioning"

    def set_last_layer(self, clip, stop_at_clip_layer: int):
        clip = clip.clone()
        clip.layer_idx = stop_at_clip_layer
        return (clip,)
