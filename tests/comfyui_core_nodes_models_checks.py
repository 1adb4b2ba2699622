"""ComfyUI's CLIPLoader / DualCLIPLoader and its SDXL refiner model on fixed inputs, run INSIDE
ComfyUI's interpreter by tests/test_core_nodes_models_comfyui.py, which runs the standalone host on
the same files and inputs.

    python tests/comfyui_core_nodes_models_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR holds models/text_encoders/clip_l.safetensors (a full-size CLIP-L in transformers names),
models/checkpoints/refiner.safetensors (a checkpoint whose UNet ComfyUI detects as SDXLRefiner),
optionally models/checkpoints/sdxl.safetensors (`fixtures.comfyui_models.build_comfyui_sdxl`, for the
base + refiner hand-over) and models_inputs.safetensors. Tensors go to
BASE_DIR/models_outputs.safetensors; the node interfaces and the detected model class to the
"interfaces" and "refiner" CHECK lines.
"""

from __future__ import annotations

import os
import sys

from comfyui_core_nodes_checks import interface
from comfyui_inprocess import report, run_check, start_comfyui

NODES = ["CLIPLoader", "DualCLIPLoader"]
PROMPT = "a (red:1.3) house by the sea, [fog]"
POSITIVE = {"aesthetic_score": 7.5, "width": 640, "height": 384}  # as CLIPTextEncodeSDXLRefiner sets them
# the base + refiner hand-over of tests/data/shared_workflows/sdxl_base_refiner.json, shortened:
# KSamplerAdvanced (seed, steps, cfg, sampler, scheduler), the base ends at HANDOVER_STEP with its leftover noise
HANDOVER = {"seed": 721897303308196, "steps": 5, "cfg": 8.0, "sampler": "euler", "scheduler": "normal"}
HANDOVER_STEP = 4
HANDOVER_PROMPTS = ("evening sunset scenery blue sky nature, glass bottle with a galaxy in it", "text, watermark")


def main(comfyui: str, base: str) -> None:
    node = start_comfyui(comfyui, base)
    import comfy.sd
    import torch
    from safetensors.torch import load_file, save_file

    import nodes as comfy_nodes

    inputs = load_file(f"{base}/models_inputs.safetensors")
    outputs: dict[str, torch.Tensor] = {}

    def interfaces():
        report("interfaces", nodes={name: interface(comfy_nodes.NODE_CLASS_MAPPINGS[name]) for name in NODES})

    def clip_l():
        (clip,) = node["CLIPLoader"].load_clip("clip_l.safetensors", "stable_diffusion")
        ((cond, extra),) = node["CLIPTextEncode"].encode(clip, PROMPT)[0]
        outputs["clip_l.cond"], outputs["clip_l.pooled"] = cond, extra["pooled_output"]
        (skipped,) = node["CLIPSetLastLayer"].set_last_layer(clip, -2)
        outputs["clip_l.cond_skip2"] = node["CLIPTextEncode"].encode(skipped, PROMPT)[0][0][0]
        report("clip_l", done=True)

    def refiner():
        path = f"{base}/models/checkpoints/refiner.safetensors"
        model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
        x, sigma = inputs["x"], inputs["sigma"]
        height, width = x.shape[2] * 8, x.shape[3] * 8
        cases = {
            "positive": dict(POSITIVE, prompt_type="positive"),
            "negative": dict(width=width, height=height, prompt_type="negative"),  # default score 2.5
        }
        for case, extra in cases.items():
            adm = model.model.encode_adm(pooled_output=inputs["pooled"], **extra)
            denoised = model.model.apply_model(x, sigma, c_crossattn=inputs["cond"], y=adm)
            outputs[f"refiner.{case}"] = denoised
        report("refiner", model_class=type(model.model).__name__, config=type(model.model.model_config).__name__)

    def sdxl_handover():
        if not os.path.isfile(f"{base}/models/checkpoints/sdxl.safetensors"):
            report("sdxl_handover", written=False)
            return
        model, clip, _ = node["CheckpointLoaderSimple"].load_checkpoint("sdxl.safetensors")
        refiner = comfy.sd.load_checkpoint_guess_config(
            f"{base}/models/checkpoints/refiner.safetensors", output_vae=False, output_clip=False
        )[0]
        encode = node["CLIPTextEncodeSDXL"]
        base_conds = [
            encode.execute(
                clip=clip,
                width=4096,
                height=4096,
                crop_w=0,
                crop_h=0,
                target_width=4096,
                target_height=4096,
                text_g=text,
                text_l=text,
            ).args[0]
            for text in HANDOVER_PROMPTS
        ]
        outputs["sdxl.cond"] = base_conds[0][0][0]
        refiner_conds = [
            [
                [
                    inputs["cond"],
                    {"pooled_output": inputs["pooled"], "aesthetic_score": score, "width": 1024, "height": 1024},
                ]
            ]
            for score in (6.0, 2.5)
        ]
        (latent,) = node["EmptyLatentImage"].generate(64, 64, 1)
        h = HANDOVER
        args = (h["steps"], h["cfg"], h["sampler"], h["scheduler"])
        (handed,) = node["KSamplerAdvanced"].sample(
            model, "enable", h["seed"], *args, *base_conds, latent, 0, HANDOVER_STEP, "enable"
        )
        (refined,) = node["KSamplerAdvanced"].sample(
            refiner, "disable", 0, *args, *refiner_conds, handed, HANDOVER_STEP, 10000, "disable"
        )
        outputs["sdxl.handed_over"], outputs["sdxl.refined"] = handed["samples"], refined["samples"]
        report("sdxl_handover", written=True)

    checks = (("interfaces", interfaces), ("clip_l", clip_l), ("refiner", refiner), ("sdxl_handover", sdxl_handover))
    for name, fn in checks:
        run_check(name, fn)
    save_file({k: v.contiguous() for k, v in outputs.items()}, f"{base}/models_outputs.safetensors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
