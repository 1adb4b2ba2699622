"""The standalone host: ComfyUI's core nodes implemented on diffusers/transformers.

Same class names, inputs, outputs and semantics as ComfyUI's, so workflow files run headless
unchanged. Importing this module is cheap: node modules import torch/diffusers lazily.
"""

from .nodes_clip_loaders import CLIPLoader, DualCLIPLoader
from .nodes_clip_sdxl import CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
from .nodes_conditioning import CLIPSetLastLayer, CLIPTextEncode
from .nodes_conditioning_ops import ConditioningCombine, ConditioningSetTimestepRange, ConditioningZeroOut
from .nodes_controlnet import ControlNetApply, ControlNetApplyAdvanced, ControlNetLoader
from .nodes_custom_sampling import BasicScheduler, KSamplerSelect, SamplerCustom, SDTurboScheduler
from .nodes_image import LoadImage, PreviewImage, SaveImage
from .nodes_inpaint import LoadImageMask, SetLatentNoiseMask, VAEEncodeForInpaint
from .nodes_latent import EmptyLatentImage, VAEDecode, VAEEncode
from .nodes_latent_batch import LatentFromBatch, RepeatLatentBatch
from .nodes_loaders import CheckpointLoaderSimple, DiffusersLoader, UNETLoader, VAELoader
from .nodes_lora import LoraLoader, LoraLoaderModelOnly
from .nodes_sampler_advanced import BasicGuider, CFGGuider, DisableNoise, RandomNoise, SamplerCustomAdvanced
from .nodes_sampling import KSampler, KSamplerAdvanced, ModelSamplingDiscrete
from .nodes_upscale import ImageScale, ImageScaleBy, ImageScaleToTotalPixels, LatentUpscale, LatentUpscaleBy

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
        LatentUpscale,
        LatentUpscaleBy,
        ImageScale,
        ImageScaleBy,
        ImageScaleToTotalPixels,
        RepeatLatentBatch,
        LatentFromBatch,
        SetLatentNoiseMask,
        VAEEncodeForInpaint,
        LoadImageMask,
        ConditioningCombine,
        ConditioningZeroOut,
        ConditioningSetTimestepRange,
        SDTurboScheduler,
        SamplerCustomAdvanced,
        RandomNoise,
        DisableNoise,
        CFGGuider,
        BasicGuider,
        CLIPTextEncodeSDXL,
        CLIPTextEncodeSDXLRefiner,
        VAELoader,
        UNETLoader,
        CLIPLoader,
        DualCLIPLoader,
        ControlNetLoader,
        ControlNetApplyAdvanced,
        ControlNetApply,
    )
}

__all__ = ["NODE_CLASS_MAPPINGS"]
