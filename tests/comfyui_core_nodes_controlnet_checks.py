"""ComfyUI's own ControlNetLoader / ControlNetApplyAdvanced / ControlNetApply on fixed inputs, run INSIDE ComfyUI's
interpreter by tests/test_core_nodes_controlnet_comfyui.py, which runs the standalone host's nodes on
the same inputs.

    python tests/comfyui_core_nodes_controlnet_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR holds models/diffusion_models/unet.safetensors (an SD1.5-detectable UNet),
models/controlnet/control_ldm.safetensors (a ControlNet for it in the original LDM names) and
control_diffusers.safetensors (the same weights in diffusers names), models/loras/lcm.safetensors,
the pack in custom_nodes/ and controlnet_inputs.safetensors. Latents go to
BASE_DIR/controlnet_outputs.safetensors under "<case>" keys; interfaces and what ComfyUI made of
each file in the CHECK lines.
"""

from __future__ import annotations

import sys

from comfyui_core_nodes_checks import interface
from comfyui_inprocess import report, run_check, start_comfyui

NODES = ["ControlNetLoader", "ControlNetApplyAdvanced", "ControlNetApply"]
FILES = ("control_ldm.safetensors", "control_diffusers.safetensors")


def main(comfyui: str, base: str) -> None:
    node = start_comfyui(comfyui, base)
    import torch
    from safetensors.torch import load_file, save_file

    import nodes as comfy_nodes

    inputs = load_file(f"{base}/controlnet_inputs.safetensors")
    outputs: dict[str, torch.Tensor] = {}
    positive, negative = [[inputs["cond_p"], {}]], [[inputs["cond_n"], {}]]
    latent = {"samples": inputs["latent"]}

    def interfaces():
        classes = comfy_nodes.NODE_CLASS_MAPPINGS
        report("interfaces", nodes={name: interface(classes[name]) for name in NODES})

    def files():
        found = {}
        for name in FILES:
            try:
                net = node["ControlNetLoader"].load_controlnet(name)[0]
                found[name] = type(net).__name__
            except Exception as error:  # ComfyUI refuses it: say how
                found[name] = f"refused: {type(error).__name__}: {str(error)[:200]}"
        report("files", found=found)

    def sampling():
        model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
        net = node["ControlNetLoader"].load_controlnet("control_ldm.safetensors")[0]
        apply = node["ControlNetApplyAdvanced"].apply_controlnet
        ks = node["KSampler"].sample

        def run(pos, neg, cfg, seed=3, steps=4, sampler="euler"):
            return ks(model, seed, steps, cfg, sampler, "normal", pos, neg, latent)[0]["samples"]

        outputs["plain.cfg1"] = run(positive, negative, 1.0)
        full = apply(positive, negative, net, inputs["hint"], 1.0, 0.0, 1.0)
        outputs["full.cfg1"] = run(*full, 1.0)
        outputs["full.cfg5"] = run(*full, 5.0)
        ranged = apply(positive, negative, net, inputs["hint"], 0.7, 0.2, 0.7)
        outputs["ranged.cfg5"] = run(*ranged, 5.0, steps=6)
        chained = apply(*ranged, net, inputs["hint_2"], 0.5, 0.0, 0.5)
        outputs["chained.cfg5"] = run(*chained, 5.0, steps=6)
        zero = apply(positive, negative, net, inputs["hint"], 0.0, 0.0, 1.0)
        outputs["zero.cfg5"] = run(*zero, 5.0)
        outputs["plain.cfg5"] = run(positive, negative, 5.0)
        report("sampling", done=True)

    def old_apply():
        model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
        net = node["ControlNetLoader"].load_controlnet("control_ldm.safetensors")[0]
        apply = node["ControlNetApply"].apply_controlnet
        ks = node["KSampler"].sample

        def run(pos, neg, cfg, seed=3, steps=4):
            return ks(model, seed, steps, cfg, "euler", "normal", pos, neg, latent)[0]["samples"]

        (pos,) = apply(positive, net, inputs["hint"], 0.8)
        outputs["old.cfg1"] = run(pos, negative, 1.0)
        outputs["old.cfg5"] = run(pos, negative, 5.0)  # the negative gets the positive's ControlNet
        (chained,) = apply(pos, net, inputs["hint_2"], 0.5)
        outputs["old.chained.cfg5"] = run(chained, negative, 5.0)
        (own,) = apply(negative, net, inputs["hint_2"], 0.6)
        outputs["old.own_negative.cfg5"] = run(pos, own, 5.0)  # a negative with its own keeps it
        (second,) = apply([[inputs["cond_n"], {}]], net, inputs["hint_2"], 0.5)
        outputs["old.two_entries.cfg5"] = run(pos + second, negative, 5.0)  # the later one wins
        (zero,) = apply(positive, net, inputs["hint"], 0.0)
        outputs["old.zero.cfg5"] = run(zero, negative, 5.0)
        report("old_apply", done=True)

    def lcm():
        model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
        lora = node["LoraLoaderModelOnly"].load_lora_model_only(model, "lcm.safetensors", 1.0)[0]
        net = node["ControlNetLoader"].load_controlnet("control_ldm.safetensors")[0]
        pos, neg = node["ControlNetApplyAdvanced"].apply_controlnet(
            positive, negative, net, inputs["hint"], 0.9, 0.0, 0.8
        )
        sample = node["LCMAccel_KSampler"].sample
        outputs["lcm.plain"] = sample(lora, 7, 4, 1.0, positive, negative, latent, 50, 0.0, 1.0)[0]["samples"]
        for cfg in (1.0, 1.5):
            outputs[f"lcm.cfg{cfg}"] = sample(lora, 7, 4, cfg, pos, neg, latent, 50, 0.0, 1.0)[0]["samples"]
        report("lcm", done=True)

    for name, fn in (
        ("interfaces", interfaces),
        ("files", files),
        ("sampling", sampling),
        ("old_apply", old_apply),
        ("lcm", lcm),
    ):
        run_check(name, fn)
    save_file({k: v.contiguous().float() for k, v in outputs.items()}, f"{base}/controlnet_outputs.safetensors")
    report("saved", keys=sorted(outputs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
