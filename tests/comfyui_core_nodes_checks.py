"""ComfyUI's own core nodes on fixed inputs, run INSIDE ComfyUI's interpreter by
tests/test_core_nodes_comfyui.py, which runs the standalone host's nodes on the same inputs.

    python tests/comfyui_core_nodes_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR holds models/diffusion_models/unet.safetensors (an SD1.5-detectable UNet), a TAESD pair in
models/vae_approx, input/mask.png
and core_inputs.safetensors (the tensors every check starts from). Tensor results go to
BASE_DIR/core_outputs.safetensors under "<check>.<case>" keys; the node interfaces, as JSON, in
the "interfaces" CHECK line.
"""

from __future__ import annotations

import functools
import sys

from comfyui_inprocess import call_node, report, run_check, start_comfyui

NODES = [
    "LatentUpscale",
    "LatentUpscaleBy",
    "ImageScale",
    "ImageScaleBy",
    "ImageScaleToTotalPixels",
    "RepeatLatentBatch",
    "LatentFromBatch",
    "SetLatentNoiseMask",
    "VAEEncodeForInpaint",
    "LoadImageMask",
    "ConditioningCombine",
    "ConditioningZeroOut",
    "ConditioningSetTimestepRange",
    "SDTurboScheduler",
    "SamplerCustomAdvanced",
    "RandomNoise",
    "DisableNoise",
    "CFGGuider",
    "BasicGuider",
    "CLIPTextEncodeSDXL",
    "CLIPTextEncodeSDXLRefiner",
    "VAELoader",
    "UNETLoader",
]
OPTION_KEYS = ("default", "min", "max", "step", "round")
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def interface(cls) -> dict:
    """A node class's inputs (name, type or combo values, numeric options), outputs and category."""
    inputs = {}
    for section, entries in cls.INPUT_TYPES().items():
        if section == "hidden":
            continue
        for name, spec in entries.items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if kind == "COMBO":
                kind = list(options.get("options", []))
            kept = {k: options[k] for k in OPTION_KEYS if k in options}
            inputs[name] = [section, kind if isinstance(kind, str) else list(kind), kept]
    return {
        "inputs": inputs,
        "order": [n for section in ("required", "optional") for n in cls.INPUT_TYPES().get(section, {})],
        "return_types": list(cls.RETURN_TYPES),
        "function": cls.FUNCTION,
        "category": cls.CATEGORY,
        "v3": hasattr(cls, "define_schema"),
    }


def main(comfyui: str, base: str) -> None:
    node = start_comfyui(comfyui, base)
    import torch
    from safetensors.torch import load_file, save_file

    import nodes as comfy_nodes

    inputs = load_file(f"{base}/core_inputs.safetensors")
    outputs: dict[str, torch.Tensor] = {}

    call = functools.partial(call_node, node)

    def interfaces():
        report(
            "interfaces",
            nodes={name: interface(comfy_nodes.NODE_CLASS_MAPPINGS[name]) for name in NODES if name in node},
        )

    def resize():
        latent = {"samples": inputs["latent"]}
        image = inputs["image"]
        for method in LATENT_METHODS:
            for crop in ("disabled", "center"):
                out = call("LatentUpscale", samples=latent, upscale_method=method, width=200, height=104, crop=crop)
                outputs[f"resize.LatentUpscale.{method}.{crop}"] = out[0]["samples"]
            out = call("LatentUpscaleBy", samples=latent, upscale_method=method, scale_by=1.7)
            outputs[f"resize.LatentUpscaleBy.{method}"] = out[0]["samples"]
        for method in IMAGE_METHODS:
            for crop in ("disabled", "center"):
                out = call("ImageScale", image=image, upscale_method=method, width=45, height=31, crop=crop)
                outputs[f"resize.ImageScale.{method}.{crop}"] = out[0]
            outputs[f"resize.ImageScaleBy.{method}"] = call(
                "ImageScaleBy", image=image, upscale_method=method, scale_by=1.3
            )[0]
            out = call("ImageScaleToTotalPixels", image=image, upscale_method=method, megapixels=0.01)
            outputs[f"resize.ImageScaleToTotalPixels.{method}"] = out[0]
        report("resize", done=True)

    def batches():
        latent = {"samples": inputs["batch"], "noise_mask": inputs["batch_masks"], "batch_index": [5, 6, 7, 8]}
        repeated = call("RepeatLatentBatch", samples=latent, amount=3)[0]
        picked = call("LatentFromBatch", samples=latent, batch_index=2, length=3)[0]
        plain = call("LatentFromBatch", samples={"samples": inputs["batch"]}, batch_index=1, length=2)[0]
        masked = call("SetLatentNoiseMask", samples={"samples": inputs["batch"]}, mask=inputs["mask"])[0]
        for key, value in (("repeat", repeated), ("from", picked), ("plain", plain), ("masked", masked)):
            for field in ("samples", "noise_mask"):
                if field in value:
                    outputs[f"batches.{key}.{field}"] = value[field]
        report(
            "batches",
            indices={
                "repeat": repeated.get("batch_index"),
                "from": picked.get("batch_index"),
                "plain": plain["batch_index"],
            },
        )

    def inpaint():
        class RecordingVAE:  # ComfyUI's node uses only these two members of its VAE
            downscale_ratio = 8

            def encode(self, pixels):
                return pixels.clone()

        for grow in (0, 1, 6, 7):
            out = call(
                "VAEEncodeForInpaint",
                vae=RecordingVAE(),
                pixels=inputs["inpaint_pixels"],
                mask=inputs["inpaint_mask"],
                grow_mask_by=grow,
            )
            outputs[f"inpaint.{grow}.pixels"] = out[0]["samples"]
            outputs[f"inpaint.{grow}.mask"] = out[0]["noise_mask"]
        for channel in ("alpha", "red", "green", "blue"):
            outputs[f"inpaint.mask_png.{channel}"] = call("LoadImageMask", image="mask.png", channel=channel)[0]
        report("inpaint", done=True)

    def sampling():
        model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
        a = [[inputs["cond_a"], {}]]
        b = [[inputs["cond_b"], {}]]
        negative = [[inputs["cond_n"], {}]]
        latent = {"samples": inputs["sample_latent"]}
        ranged_a = call("ConditioningSetTimestepRange", conditioning=a, start=0.0, end=0.4)[0]
        ranged_b = call("ConditioningSetTimestepRange", conditioning=b, start=0.4, end=1.0)[0]
        split = call("ConditioningCombine", conditioning_1=ranged_a, conditioning_2=ranged_b)[0]
        weighted = call(
            "ConditioningCombine", conditioning_1=a, conditioning_2=[[inputs["cond_b"], {"strength": 0.5}]]
        )[0]
        zero = call("ConditioningZeroOut", conditioning=negative)[0]
        ks = node["KSampler"].sample
        outputs["sampling.split"] = ks(model, 3, 4, 3.0, "euler", "normal", split, negative, latent)[0]["samples"]
        outputs["sampling.weighted"] = ks(model, 4, 4, 2.5, "dpmpp_2m", "karras", weighted, negative, latent)[0][
            "samples"
        ]
        outputs["sampling.zero"] = ks(model, 5, 3, 4.0, "euler", "simple", a, zero, latent)[0]["samples"]
        for steps, denoise in ((1, 1.0), (4, 1.0), (2, 0.5), (10, 0.3)):
            outputs[f"sampling.turbo.{steps}.{denoise}"] = call(
                "SDTurboScheduler", model=model, steps=steps, denoise=denoise
            )[0]
        turbo_sigmas = call("SDTurboScheduler", model=model, steps=2, denoise=1.0)[0]
        ancestral = call("KSamplerSelect", sampler_name="euler_ancestral")[0]
        noise = call("RandomNoise", noise_seed=9)[0]
        guider = call("CFGGuider", model=model, positive=a, negative=negative, cfg=1.0)[0]
        out = call(
            "SamplerCustomAdvanced",
            noise=noise,
            guider=guider,
            sampler=ancestral,
            sigmas=turbo_sigmas,
            latent_image=latent,
        )
        outputs["sampling.turbo_run"], outputs["sampling.turbo_run_denoised"] = out[0]["samples"], out[1]["samples"]
        sigmas = call("BasicScheduler", model=model, scheduler="karras", steps=4, denoise=0.7)[0]
        guider = call("CFGGuider", model=model, positive=split, negative=zero, cfg=5.0)[0]
        out = call(
            "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=ancestral, sigmas=sigmas, latent_image=latent
        )
        outputs["sampling.advanced_cfg"] = out[0]["samples"]
        basic = call("BasicGuider", model=model, conditioning=weighted)[0]
        euler = call("KSamplerSelect", sampler_name="euler")[0]
        off = call("DisableNoise")[0]
        out = call("SamplerCustomAdvanced", noise=off, guider=basic, sampler=euler, sigmas=sigmas, latent_image=latent)
        outputs["sampling.advanced_basic"] = out[0]["samples"]
        report("sampling", done=True)

    def taesd():
        vae = call("VAELoader", vae_name="taesd")[0]
        outputs["taesd.decoded"] = vae.decode(inputs["taesd_latent"])
        outputs["taesd.encoded"] = vae.encode(inputs["taesd_pixels"])
        report("taesd", done=True)

    for name, fn in (
        ("interfaces", interfaces),
        ("resize", resize),
        ("batches", batches),
        ("inpaint", inpaint),
        ("sampling", sampling),
        ("taesd", taesd),
    ):
        run_check(name, fn)
    save_file({k: v.contiguous().float() for k, v in outputs.items()}, f"{base}/core_outputs.safetensors")
    report("saved", keys=sorted(outputs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
