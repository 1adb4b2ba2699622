"""A LORA_STACK source node, as the stack packs (Efficiency Nodes, Comfyroll, Easy-Use, TinyTerra) make
one: [(lora_name, model_strength, clip_strength), ...] with a "None" entry that must be skipped. Used by
the headless tests (registered in the harness) and copied as a custom node into ComfyUI's base dir."""


class TestLoraStack:
    """A LORA_STACK of one LoRA plus an empty ("None") slot."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": ("STRING", {"default": ""}),
                "model_strength": ("FLOAT", {"default": 1.0}),
                "clip_strength": ("FLOAT", {"default": 1.0}),
            }
        }

    RETURN_TYPES = ("LORA_STACK",)
    FUNCTION = "stack"
    CATEGORY = "testing"

    def stack(self, lora_name: str, model_strength: float, clip_strength: float):
        return ([("None", 1.0, 1.0), (lora_name, model_strength, clip_strength)],)


NODE_CLASS_MAPPINGS = {"TestLoraStack": TestLoraStack}
