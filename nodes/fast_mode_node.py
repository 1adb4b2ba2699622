"""The LCMFastMode node: replay captured forwards (UNet step, text encode, VAE decode) on CUDA."""

from __future__ import annotations

from ..hosts import get_host
from ..hosts.node_declaration import CATEGORY

BACKENDS = ["cuda_graph", "torch_compile"]


class LCMFastMode:
    """Opt-in fast path: each UNet step (per batch, size and dtype), text encode and VAE decode is
    captured once and then replayed, and the LCM / TCD loop never waits on the GPU between steps.
    Standalone host on CUDA only; elsewhere it says why once and everything runs as before."""

    NODE_ID = "LCMAccel_FastMode"
    DISPLAY_NAME = "LCM Fast Mode (CUDA)"
    SEARCH_ALIASES = ("cuda graph", "torch compile", "fast", "speed up")
    OLD_IDS = ("LCMFastMode",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose sampling should replay captured UNet steps."}),
                "enable": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Off: the model runs eager (as without this node)."},
                ),
                "backend": (
                    BACKENDS,
                    {
                        "default": "cuda_graph",
                        "tooltip": "cuda_graph: the eager kernels captured as CUDA graphs (no compile time). "
                        "torch_compile: torch.compile mode='reduce-overhead' (fused kernels, "
                        "compiles per shape).",
                    },
                ),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Also capture this CLIP's text encoding."}),
                "vae": ("VAE", {"tooltip": "Also capture this VAE's decoding."}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The model with fast mode set.",
        "The CLIP with fast mode set (if given).",
        "The VAE with fast mode set (if given).",
    )
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "GPU fast path: CUDA-graph (or torch.compile) replay of the UNet step, text encoder and VAE "
        "decoder, keyed by batch, size and dtype; LoRA changes keep the captures valid."
    )

    def apply(self, model, enable: bool, backend: str, clip=None, vae=None):
        if not isinstance(enable, bool):
            raise ValueError(f"{self.NODE_ID}: enable must be true or false, got {enable!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{self.NODE_ID}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        return get_host().fast_mode(model, clip, vae, enable, backend)
