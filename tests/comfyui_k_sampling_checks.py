"""ComfyUI's own sampling nodes on real UNets with fixed inputs, run INSIDE ComfyUI's interpreter by
tests/test_k_sampling_nodes_comfyui.py (sd15) and tests/test_k_sampling_sdxl.py (sdxl), which run the
standalone host's nodes on the same inputs (`CASES`, shared by both sides).

    python tests/comfyui_k_sampling_checks.py COMFYUI_PATH BASE_DIR FAMILY

BASE_DIR holds models/diffusion_models/unet.safetensors (an SD1.5-detectable UNet, or for sdxl an
SDXL-detectable Segmind-Vega one), the pack in custom_nodes/ and k_sampling_inputs.safetensors.
Latents go to BASE_DIR/k_sampling_outputs.safetensors under the case names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# case -> (node calls as (node name, inputs)): inputs naming "@key" take that input tensor, "$name" the
# output (first value, or "$name.1" the second) of an earlier call of the case, "*model" the MODEL.
# The last call's first output (its "samples") is the case's result.
INPAINT = {"samples": "@latent", "mask": "@mask"}


def _ksampler(sampler: str, scheduler: str = "normal", seed: int = 5, steps: int = 4, cfg: float = 4.0, **kw):
    return (
        "KSampler",
        dict(
            model="*model",
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler,
            scheduler=scheduler,
            positive="@positive",
            negative="@negative",
            latent_image=kw.pop("latent", "$masked"),
            denoise=kw.pop("denoise", 1.0),
        ),
    )


MASKED = ("SetLatentNoiseMask", dict(samples="@latent_dict", mask="@mask"))
SD15_CASES: dict[str, list[tuple[str, dict]]] = {
    # inpainting: ComfyUI's ddim keeps the unmasked region on fresh noise from seed + 1
    "inpaint.ddim": [MASKED, _ksampler("ddim")],
    "inpaint.ddim.denoise0.6": [MASKED, _ksampler("ddim", "karras", denoise=0.6)],
    "inpaint.euler": [MASKED, _ksampler("euler")],  # the same sampler function, the initial noise
    "inpaint.uni_pc": [MASKED, _ksampler("uni_pc", "simple")],
    "inpaint.dpmpp_2m_sde": [MASKED, _ksampler("dpmpp_2m_sde", "karras")],
    "inpaint.ddim.custom": [
        MASKED,
        ("KSamplerSelect", dict(sampler_name="ddim")),
        ("BasicScheduler", dict(model="*model", scheduler="normal", steps=4, denoise=1.0)),
        (
            "SamplerCustom",
            dict(
                model="*model",
                add_noise=True,
                noise_seed=11,
                cfg=3.0,
                positive="@positive",
                negative="@negative",
                sampler="$KSamplerSelect",
                sigmas="$BasicScheduler",
                latent_image="$masked",
            ),
        ),
    ],
    "inpaint.ddim.advanced_no_noise": [
        MASKED,
        (
            "KSamplerAdvanced",
            dict(
                model="*model",
                add_noise="disable",
                noise_seed=21,
                steps=6,
                cfg=3.0,
                sampler_name="ddim",
                scheduler="normal",
                positive="@positive",
                negative="@negative",
                latent_image="$masked",
                start_at_step=2,
                end_at_step=10000,
                return_with_leftover_noise="disable",
            ),
        ),
    ],
    "inpaint.ddim.disable_noise": [  # DisableNoise's seed is 0: the inpainting noise is seed 1's
        MASKED,
        ("DisableNoise", dict()),
        ("CFGGuider", dict(model="*model", positive="@positive", negative="@negative", cfg=3.0)),
        ("KSamplerSelect", dict(sampler_name="ddim")),
        ("BasicScheduler", dict(model="*model", scheduler="karras", steps=4, denoise=0.5)),
        (
            "SamplerCustomAdvanced",
            dict(
                noise="$DisableNoise",
                guider="$CFGGuider",
                sampler="$KSamplerSelect",
                sigmas="$BasicScheduler",
                latent_image="$masked",
            ),
        ),
    ],
    # UniPC with one step: ComfyUI's order-0 UniPC takes no step
    "one_step.uni_pc": [_ksampler("uni_pc", "karras", steps=1, latent="@latent_dict")],
    "one_step.uni_pc_bh2": [_ksampler("uni_pc_bh2", "normal", steps=1, latent="@latent_dict")],
    "one_step.uni_pc.denoise0.5": [_ksampler("uni_pc", "simple", steps=1, latent="@latent_dict", denoise=0.5)],
    "one_step.uni_pc.custom_denoised": [
        ("KSamplerSelect", dict(sampler_name="uni_pc")),
        ("BasicScheduler", dict(model="*model", scheduler="normal", steps=1, denoise=1.0)),
        (
            "SamplerCustom",
            dict(
                model="*model",
                add_noise=True,
                noise_seed=4,
                cfg=3.0,
                positive="@positive",
                negative="@negative",
                sampler="$KSamplerSelect",
                sigmas="$BasicScheduler",
                latent_image="@latent_dict",
            ),
        ),
        ("second", {}),  # the case's result: SamplerCustom's denoised_output
    ],
}
SDXL_CASES: dict[str, list[tuple[str, dict]]] = {
    "sdxl.euler.normal": [_ksampler("euler", "normal", seed=1, steps=3, cfg=1.0, latent="@latent_dict")],
    "sdxl.dpmpp_2m.karras": [_ksampler("dpmpp_2m", "karras", seed=2, steps=3, cfg=3.0, latent="@latent_dict")],
    "sdxl.dpmpp_sde.karras": [_ksampler("dpmpp_sde", "karras", seed=3, steps=3, cfg=1.0, latent="@latent_dict")],
    "sdxl.uni_pc.simple": [_ksampler("uni_pc", "simple", seed=4, steps=3, cfg=3.0, latent="@latent_dict")],
}
CASES = {"sd15": SD15_CASES, "sdxl": SDXL_CASES}


def run_case(calls: list[tuple[str, dict]], call: Callable[..., tuple], model, inputs: dict, conds: dict):
    """Run one case's node calls with `call(node_name, **inputs) -> outputs`; its result tensor."""
    results: dict[str, tuple] = {}
    last: tuple = ()
    for name, raw in calls:
        if name == "second":
            return last[1]["samples"]
        kwargs = {}
        for key, value in raw.items():
            if isinstance(value, str) and value == "*model":
                value = model
            elif isinstance(value, str) and value.startswith("@"):
                value = conds[value[1:]] if value[1:] in conds else inputs[value[1:]]
            elif isinstance(value, str) and value.startswith("$"):
                source = value[1:]
                value = results["masked" if source == "masked" else source][0]
            kwargs[key] = value
        last = call(name, **kwargs)
        results["masked" if name == "SetLatentNoiseMask" else name] = last
    return last[0]["samples"]


def case_conds(inputs: dict, family: str) -> dict:
    """The CONDITIONING and LATENT values of the cases (SDXL conditioning carries a pooled output)."""
    extra = (lambda key: {"pooled_output": inputs[key]}) if family == "sdxl" else (lambda key: {})
    return {
        "positive": [[inputs["cond_p"], extra("pooled_p")]],
        "negative": [[inputs["cond_n"], extra("pooled_n")]],
        "latent_dict": {"samples": inputs["latent"]},
    }


def main(comfyui: str, base: str, family: str) -> None:
    import functools

    from comfyui_inprocess import call_node, report, run_check, start_comfyui

    # SDXL: PyTorch's attention kernel, as the standalone host uses (ComfyUI's CPU default chunks the
    # softmax: the same maths rounded otherwise, which UniPC on a random 2048-wide UNet amplifies)
    node = start_comfyui(comfyui, base, ("--use-pytorch-cross-attention",) if family == "sdxl" else ())
    import torch
    from safetensors.torch import load_file, save_file

    inputs = load_file(f"{base}/k_sampling_inputs.safetensors")
    outputs: dict[str, torch.Tensor] = {}

    call = functools.partial(call_node, node)

    def sampling():
        model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
        report("model", kind=type(model.model).__name__, config=type(model.model.model_config).__name__)
        conds = case_conds(inputs, family)
        for case, calls in CASES[family].items():
            outputs[case] = run_case(calls, call, model, inputs, conds)
        report("sampling", done=sorted(outputs))

    run_check("sampling", sampling)
    save_file({k: v.contiguous().float() for k, v in outputs.items()}, f"{base}/k_sampling_outputs.safetensors")
    report("saved", keys=sorted(outputs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
