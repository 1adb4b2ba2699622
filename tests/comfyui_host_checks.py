"""Checks of the ComfyUI host, run INSIDE ComfyUI's interpreter by tests/test_comfyui_host.py.

    python tests/comfyui_host_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR holds models/diffusion_models/unet.safetensors (an SD1.5-detectable UNet) and LoRAs in
models/loras/. ComfyUI is imported in-process (its own nodes, model management and samplers; our
pack loaded from BASE_DIR/custom_nodes as ComfyUI loads custom nodes). One JSON object per check
is printed on a line starting with "CHECK "; the pytest side asserts on them.
"""

from __future__ import annotations

import sys

from comfyui_inprocess import report, run_check, start_comfyui


def main(comfyui: str, base: str) -> None:
    node = start_comfyui(comfyui, base)
    import comfy.model_management as mm
    import comfy.utils
    import torch

    report(
        "registered",
        nodes=sorted(name for name, obj in node.items() if getattr(obj, "CATEGORY", "") == "LCM Accel"),
        deprecated=sorted(
            name
            for name, obj in node.items()
            if getattr(obj, "CATEGORY", "") == "LCM Accel" and obj.cls.GET_SCHEMA().is_deprecated
        ),
    )

    model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 32, 32)}
    lcm, style, sdxl = "lcm.safetensors", "style.safetensors", "sdxl_lcm.safetensors"

    def weights(patcher):
        mm.load_models_gpu([patcher])
        return {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}

    def max_diff(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    def changed(a, base_weights):
        return sum(not torch.equal(a[k], base_weights[k]) for k in a)

    def lora_mix():
        base = weights(model)
        mixed = node["LCMAccel_AdapterMixer4"].mix(model, lcm, 1.0, style, 0.8)[0]
        chained = node["LoraLoaderModelOnly"].load_lora_model_only(model, lcm, 1.0)[0]
        chained = node["LoraLoaderModelOnly"].load_lora_model_only(chained, style, 0.8)[0]
        composed = node["LoraLoaderModelOnly"].load_lora_model_only(model, lcm, 1.0)[0]
        composed = node["LCMAccel_AdapterMixer4"].mix(composed, style, 0.8)[0]
        w_mixed, w_chained, w_composed = weights(mixed), weights(chained), weights(composed)
        spec = mixed.object_patches["lcm_accel_inplace.wanted"].spec  # in place: one write per weight
        w_after = weights(model)
        report(
            "lora_mix",
            mixer_vs_chained=max_diff(w_mixed, w_chained),
            composed_vs_chained=max_diff(w_composed, w_chained),
            changed_mixer=changed(w_mixed, base),
            changed_chained=changed(w_chained, base),
            delta_scale=max(float((w_chained[k] - base[k]).abs().max()) for k in base),
            base_restored=max_diff(w_after, base),
            patches_per_key=len(spec.groups),
            mixer_keys=len(spec.targets),
            comfy_patches=len(mixed.patches),
            input_patches=len(model.patches),
        )

    def bad_lora():
        uuid_before, patches_before = model.patches_uuid, dict(model.patches)
        try:
            node["LCMAccel_AdapterMixer4"].mix(model, lcm, 1.0, sdxl, 1.0)
            report("bad_lora", raised=None)
        except Exception as error:  # noqa: BLE001 - the check reports what was raised
            report(
                "bad_lora",
                raised=type(error).__name__,
                message=str(error),
                unchanged=model.patches_uuid == uuid_before and model.patches == patches_before,
            )

    def sampling():
        lcm_model = node["LCMAccel_LoraLoader"].load_lora(model, lcm, 1.0)[0]
        sampling_name = type(lcm_model.get_model_object("model_sampling")).__name__
        sigmas = node["LCMAccel_Scheduler"].get_sigmas(lcm_model, 4, 50, 1.0)[0]
        results = {}
        for gamma, cfg in ((0.0, 1.0), (0.0, 1.5), (0.3, 1.0)):
            one = node["LCMAccel_KSampler"].sample(lcm_model, 7, 4, cfg, positive, negative, latent, 50, gamma, 1.0)[0]
            sampler = node["LCMAccel_Sampler"].get_sampler(gamma)[0]
            custom = node["SamplerCustom"].sample(lcm_model, True, 7, cfg, positive, negative, sampler, sigmas, latent)[
                0
            ]
            results[f"gamma{gamma}_cfg{cfg}"] = float((one["samples"] - custom["samples"]).abs().max())
        ours = node["LCMAccel_KSampler"].sample(lcm_model, 7, 4, 1.0, positive, negative, latent, 50, 0.0, 1.0)[0][
            "samples"
        ]
        comfy_lcm = node["LoraLoaderModelOnly"].load_lora_model_only(model, lcm, 1.0)[0]
        comfy_lcm = node["ModelSamplingDiscrete"].patch(comfy_lcm, "lcm", False)[0]
        on_comfy_lcm = node["LCMAccel_KSampler"].sample(comfy_lcm, 7, 4, 1.0, positive, negative, latent, 50, 0.0, 1.0)[
            0
        ]["samples"]
        plain = node["LoraLoaderModelOnly"].load_lora_model_only(model, lcm, 1.0)[0]
        on_plain = node["LCMAccel_KSampler"].sample(plain, 7, 4, 1.0, positive, negative, latent, 50, 0.0, 1.0)[0][
            "samples"
        ]
        builtin = node["KSampler"].sample(lcm_model, 7, 4, 1.0, "lcm", "sgm_uniform", positive, negative, latent)[0][
            "samples"
        ]
        scale = float(ours.abs().max())
        report(
            "sampling",
            model_sampling=sampling_name,
            sigmas=[float(s) for s in sigmas],
            lcmksampler_vs_samplercustom=results,
            ours_on_comfy_lcm_rel=float((on_comfy_lcm - ours).abs().max()) / scale,
            ours_on_plain_rel=float((on_plain - ours).abs().max()) / scale,
            builtin_finite=bool(torch.isfinite(builtin).all()),
            builtin_std=float(builtin.std()),
            ours_std=float(ours.std()),
        )

    def interrupt():
        lcm_model = node["LCMAccel_LoraLoader"].load_lora(model, lcm, 1.0)[0]
        comfy.utils.set_progress_bar_global_hook(lambda *a, **k: mm.throw_exception_if_processing_interrupted())
        mm.interrupt_current_processing(True)
        try:
            node["LCMAccel_KSampler"].sample(lcm_model, 7, 4, 1.0, positive, negative, latent, 50, 0.0, 1.0)
            report("interrupt", raised=None)
        except mm.InterruptProcessingException:
            report("interrupt", raised="InterruptProcessingException")
        finally:
            mm.interrupt_current_processing(False)
            comfy.utils.set_progress_bar_global_hook(None)

    for name, fn in (("lora_mix", lora_mix), ("bad_lora", bad_lora), ("sampling", sampling), ("interrupt", interrupt)):
        run_check(name, fn)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
