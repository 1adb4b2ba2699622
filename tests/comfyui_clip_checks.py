"""Checks of the LoRA nodes' CLIP side and LORA_STACK input, run INSIDE ComfyUI by tests/test_comfyui_clip.py.

    python tests/comfyui_clip_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR holds models/diffusion_models/unet.safetensors (an SD1.5-detectable UNet),
models/text_encoders/clip_l.safetensors (CLIP-L), LoRAs in models/loras/ (see the test's fixture) and
custom_nodes/ with the pack and a LORA_STACK source node. One "CHECK {json}" line per check; the
patched text-encoder weights of the core LoraLoader are saved to BASE_DIR/comfy_clip_weights.safetensors
for the standalone comparison on the pytest side.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from comfyui_inprocess import report, run_check, start_comfyui

TEXT = "a photo of a cat wearing a hat"
STYLE, PEFT_TE, XL_TE = "style_te.safetensors", "te_diffusers.safetensors", "xl_te.safetensors"
CLIP_PREFIX = "clip_l.transformer."


def main(comfyui: str, base: str) -> None:
    node = start_comfyui(comfyui, base)
    import comfy.model_management as mm
    import torch
    from safetensors.torch import save_file

    model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
    clip = node["CLIPLoader"].load_clip("clip_l.safetensors", "stable_diffusion")[0]
    mixer, loader, core = node["LCMAccel_AdapterMixer4"], node["LCMAccel_LoraLoader"], node["LoraLoader"]

    def clip_weights(c) -> dict:
        c.load_model()
        return {
            k[len(CLIP_PREFIX) :]: v.detach().float().clone()
            for k, v in c.cond_stage_model.state_dict().items()
            if k.startswith(CLIP_PREFIX)
        }

    def unet_weights(m) -> dict:
        mm.load_models_gpu([m])
        return {k: v.detach().clone() for k, v in m.model.diffusion_model.state_dict().items()}

    def encoded(c) -> torch.Tensor:
        return node["CLIPTextEncode"].encode(c, TEXT)[0][0][0]

    def max_diff(a: dict, b: dict) -> float:
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

    base_clip = clip_weights(clip)

    def changed(weights: dict) -> int:
        return sum(not torch.equal(weights[k], base_clip[k]) for k in weights)

    def parity():
        ref_model, ref_clip = core.load_lora(model, clip, STYLE, 0.8, 0.6)
        ours_model, ours_clip = mixer.mix(model, STYLE, 0.8, clip=clip, clip_weight_1=0.6)
        # each CLIP's weights and encoding back to back: ComfyUI re-patches only when the CLIP changes
        w_ref, e_ref = clip_weights(ref_clip), encoded(ref_clip)
        save_file({k: v.contiguous() for k, v in w_ref.items()}, str(Path(base) / "comfy_clip_weights.safetensors"))
        w_ours, e_ours = clip_weights(ours_clip), encoded(ours_clip)
        loader_model, loader_clip = loader.load_lora(model, STYLE, 0.8, clip=clip, strength_clip=0.6)
        w_loader = clip_weights(loader_clip)
        w_after, e_base = clip_weights(clip), encoded(clip)
        u_ref, u_ours = unet_weights(ref_model), unet_weights(ours_model)
        report(
            "parity",
            clip_weights_vs_core=max_diff(w_ours, w_ref),
            changed_clip_weights=changed(w_ref),
            changed_ours=changed(w_ours),
            encoded_vs_core=float((e_ours - e_ref).abs().max()),
            encoded_change=float((e_ref - e_base).abs().max()),
            loader_clip_vs_core=max_diff(w_loader, w_ref),
            unet_vs_core=max_diff(u_ours, u_ref),
            unet_delta=max(float((u_ref[k] - v).abs().max()) for k, v in unet_weights(model).items()),
            input_clip_patches=len(clip.patcher.patches),
            clip_weights_after=max_diff(w_after, base_clip),
        )

    def two_loras_and_stack():
        chained = core.load_lora(model, clip, STYLE, 0.8, 0.6)[1]
        chained = core.load_lora(model, chained, PEFT_TE, 0.0, -0.4)[1]
        w_chained = clip_weights(chained)
        slots = mixer.mix(model, STYLE, 0.8, PEFT_TE, 0.0, clip=clip, clip_weight_1=0.6, clip_weight_2=-0.4)
        stack = [(STYLE, 0.8, 0.6), ("None", 1.0, 1.0), (PEFT_TE, 0.0, -0.4)]
        stacked = mixer.mix(model, "None", 1.0, lora_stack=stack, clip=clip)
        both = mixer.mix(
            model, STYLE, 0.5, lora_stack=[(STYLE, 0.3, 0.6), (PEFT_TE, 0.0, -0.4)], clip=clip, clip_weight_1=0.0
        )
        u_slots, u_stacked, u_both = unet_weights(slots[0]), unet_weights(stacked[0]), unet_weights(both[0])
        report(
            "stack",
            slots_vs_chained=max_diff(clip_weights(slots[1]), w_chained),
            stack_vs_chained=max_diff(clip_weights(stacked[1]), w_chained),
            split_vs_chained=max_diff(clip_weights(both[1]), w_chained),
            stack_unet_vs_slots=max_diff(u_stacked, u_slots),
            split_unet_vs_slots=max_diff(u_both, u_slots),
            changed_chained=changed(w_chained),
        )

    def no_clip():
        report(
            "no_clip",
            mixer=mixer.mix(model, STYLE, 0.8)[1] is None,
            loader=loader.load_lora(model, STYLE, 1.0)[1] is None,
            unet_only_returns_input=mixer.mix(model, "unet_only.safetensors", 1.0, clip=clip)[1] is clip,
        )

    def bad_te():
        before = dict(clip.patcher.patches)
        try:
            mixer.mix(model, STYLE, 0.8, XL_TE, 0.0, clip=clip, clip_weight_2=1.0)
            report("bad_te", raised=None)
        except Exception as error:  # noqa: BLE001 - the check reports what was raised
            report("bad_te", raised=type(error).__name__, message=str(error), unchanged=clip.patcher.patches == before)

    def bad_stack():
        messages = {}
        for label, stack in (
            ("not_list", "style_te.safetensors"),
            ("short", [(STYLE, 1.0)]),
            ("missing", [("nope.safetensors", 1.0, 1.0)]),
            ("nan", [(STYLE, float("nan"), 1.0)]),
        ):
            try:
                mixer.mix(model, "None", 1.0, lora_stack=stack)
                messages[label] = None
            except ValueError as error:
                messages[label] = str(error)
        report("bad_stack", **messages)

    def validation():
        import execution

        def prompt(mixer_inputs: dict, quantize_format: str | None = None) -> dict:
            graph = {
                "1": {
                    "class_type": "UNETLoader",
                    "inputs": {"unet_name": "unet.safetensors", "weight_dtype": "default"},
                },
                "2": {
                    "class_type": "CLIPLoader",
                    "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"},
                },
                "3": {
                    "class_type": "TestLoraStack",
                    "inputs": {"lora_name": STYLE, "model_strength": 0.5, "clip_strength": 0.5},
                },
                "4": {
                    "class_type": "LCMAccel_AdapterMixer4",
                    "inputs": {
                        "model": ["1", 0],
                        "lora_1": STYLE,
                        "weight_1": 1.0,
                        "lora_2": "None",
                        "weight_2": 0.8,
                        "lora_3": "None",
                        "weight_3": 1.0,
                        "lora_4": "None",
                        "weight_4": 1.0,
                        "rank": 0,
                        **mixer_inputs,
                    },
                },
                "5": {
                    "class_type": "CLIPTextEncode",
                    "inputs": {"clip": ["4", 1] if "clip" in mixer_inputs else ["2", 0], "text": TEXT},
                },
                "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "7": {
                    "class_type": "LCMAccel_KSampler",
                    "inputs": {
                        "model": ["4", 0],
                        "seed": 0,
                        "steps": 1,
                        "cfg": 1.0,
                        "positive": ["5", 0],
                        "negative": ["5", 0],
                        "latent_image": ["6", 0],
                        "original_inference_steps": 50,
                        "gamma": 0.0,
                        "denoise": 1.0,
                    },
                },
                "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "check"}},
            }
            if quantize_format is not None:
                graph["9"] = {
                    "class_type": "LCMAccel_QuantizeUNet",
                    "inputs": {
                        "model": ["4", 0],
                        "format": quantize_format,
                        "keep": "default",
                        "group_size": 64,
                        "keep_source": False,
                    },
                }
                graph["7"]["inputs"]["model"] = ["9", 0]
            return graph

        def valid(graph: dict) -> list:
            ok, error, _, node_errors = asyncio.run(execution.validate_prompt("check", graph, None))
            return [ok, str(error) if error else None, {k: str(v) for k, v in node_errors.items()}]

        report(
            "validation",
            legacy=valid(prompt({})),
            clip_and_stack=valid(prompt({"clip": ["2", 0], "lora_stack": ["3", 0], "clip_weight_1": 0.7})),
            fp8_new=valid(prompt({}, "fp8_e4m3fn")),
            fp8_saved=valid(prompt({}, "fp8_e4m3")),
            fp8_bad=valid(prompt({}, "fp8_e5m2")),
        )

    for name, check in (
        ("parity", parity),
        ("stack", two_loras_and_stack),
        ("no_clip", no_clip),
        ("bad_te", bad_te),
        ("bad_stack", bad_stack),
        ("validation", validation),
    ):
        started = time.perf_counter()
        run_check(name, check)
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
