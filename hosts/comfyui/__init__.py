"""The ComfyUI host: the pack's nodes on ComfyUI's own types, imported only inside ComfyUI.

MODEL is ComfyUI's `ModelPatcher` (LoRA mixes go through its patch list), the LCM boundary
condition is a model-sampling object patch, SIGMAS is a tensor, SAMPLER is ComfyUI's `KSAMPLER`.
Every module here imports `comfy`; `hosts.get_host()` loads them on first use.
"""
