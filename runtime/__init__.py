"""The diffusers runtime: what the standalone host and the trainer share.

Reading checkpoints (single files, diffusers folders, quantized files) into diffusers / transformers
modules, text encoding with prompt weights, the VAE codec, device placement, the shared-module LoRA
state, fast-mode captures, and the run context (interruption, progress, model folders). It knows no
ComfyUI node semantics (those are the standalone host's) and imports no host, no harness, no node.
Importing this package is cheap: its modules import diffusers / transformers where they need them.
"""
