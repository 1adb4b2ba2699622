"""The standalone host: ComfyUI's core nodes implemented on diffusers/transformers.

Same class names, inputs, outputs and semantics as ComfyUI's, so workflow files run headless
unchanged. Importing this module is cheap: node modules import torch/diffusers lazily.
"""

from .nodes_conditioning import CLIPSetLastLayer, CLIPTextEncode
from .nodes_custom_sampling import BasicScheduler, KSamplerSelect, SamplerCustom
from .nodes_image import LoadImage, PreviewImage, SaveImage
from .nodes_latent import EmptyLatentImage, VAEDecode, VAEEncode
from .nodes_loaders import CheckpointLoaderSimple, DiffusersLoader
from .nodes_lora import LoraLoader, LoraLoaderModelOnly
from .nodes_sampling import KSampler, KSamplerAdvanced, ModelSamplingDiscrete

NODE_CLASS_MAPPINGS = {
    cls.__name__: cls
    for cls in (
        CheckpointLoaderSimple,
        DiffusersLoader,
        LoraLoader,
        LoraLoaderModelOnly,
        CLIPTextEncode,
        CLIPSetLastLayer,
        EmptyLatentImage,
        VAEDecode,
        VAEEncode,
        KSampler,
        KSamplerAdvanced,
        ModelSamplingDiscrete,
        SamplerCustom,
        KSamplerSelect,
        BasicScheduler,
        SaveImage,
        PreviewImage,
        LoadImage,
    )
}

__all__ = ["NODE_CLASS_MAPPINGS"]
