"""Checks of DeepCache in the ComfyUI host, run INSIDE ComfyUI's interpreter by tests/test_comfyui_deepcache.py.

    python tests/comfyui_deepcache_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR holds models/diffusion_models/unet.safetensors (an SD1.5-detectable UNet), the pack in
custom_nodes/, and diffusers_skips.json: for each cache branch, the LDM names of the parameters
that feature_cache.deepcache skips on the diffusers twin of that UNet (computed in the main venv).
ComfyUI is imported in-process and the pack loaded as ComfyUI loads custom nodes; everything runs
through the real nodes. One JSON object per check is printed on a line starting with "CHECK ".
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from comfyui_inprocess import report, run_check, start_comfyui

PREFIX = "model.diffusion_model."


def main(comfyui: str, base: str) -> None:
    node = start_comfyui(comfyui, base)
    import comfy.model_management as mm
    import comfy.patcher_extension as pe
    import torch

    model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
    unet = model.model.diffusion_model
    original_blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}  # small: every UNet call costs ~0.5 s on a busy 2-core CPU
    untouched = node["KSampler"].sample(model, 5, 3, 3.0, "euler", "normal", positive, negative, latent)[0]["samples"]

    def deepcache(m, interval, depth=0, start=0.0, end=1.0, schedule="uniform"):
        return node["LCMAccel_DeepCache"].apply(m, interval, depth, start, end, schedule)[0]

    def ksample(m, sampler="euler", steps=4, cfg=3.0, lat=latent, seed=5):
        return node["KSampler"].sample(m, seed, steps, cfg, sampler, "normal", positive, negative, lat)[0]["samples"]

    def lcm_ksample(m, steps=4, cfg=1.5):
        return node["LCMAccel_KSampler"].sample(m, 7, steps, cfg, positive, negative, latent, 50, 0.0, 1.0)[0][
            "samples"
        ]

    def with_stats(m):
        """A clone of a DeepCache MODEL whose runs leave their DeepCache stats in the returned list."""
        seen = []

        def probe(executor, guider, sigmas, extra_args, *args, **kwargs):
            options = extra_args["model_options"]["transformer_options"]
            run = next(v for v in options.values() if type(v).__name__ == "RunState")
            try:
                return executor(guider, sigmas, extra_args, *args, **kwargs)
            finally:
                seen.append(dict(run.stats, steps=len(sigmas) - 1))

        probed = m.clone()
        probed.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, "deepcache_check_probe", probe)
        return probed, seen

    def blocks_are_original():
        return all(
            a is b for a, b in zip(original_blocks, [*unet.input_blocks, unet.middle_block, *unet.output_blocks])
        )

    def host_module():
        return next(m for n, m in sys.modules.items() if n.endswith("hosts.comfyui.deepcache"))

    def max_diff(a, b):
        return float((a - b).abs().max())

    def mapping():
        deepcache(model, 3)  # loads the host module
        host = host_module()
        expected = json.loads((Path(base) / "diffusers_skips.json").read_text())
        names = list(unet.state_dict())
        per_branch = {}
        for branch, diffusers_keys in expected.items():
            plan = host.unet_skip_plan(unet, int(branch))
            prefixes = tuple(
                ("middle_block." if kind == "middle" else f"{kind}_blocks.{i}.") for kind, i in plan.skipped
            )
            ours = {n for n in names if n.startswith(prefixes)}
            theirs = {k[len(PREFIX) :] for k in diffusers_keys}
            per_branch[branch] = {
                "skipped": [f"{k}{i}" for k, i in plan.skipped],
                "deep": list(plan.deep),
                "params": sum(unet.state_dict()[n].numel() for n in ours),
                "same_keys": ours == theirs,
                "only_ours": sorted(ours - theirs)[:5],
                "only_diffusers": sorted(theirs - ours)[:5],
            }
        report(
            "mapping",
            branches=per_branch,
            levels=plan.num_levels,
            layers=plan.layers_per_level,
            total_params=sum(unet.state_dict()[n].numel() for n in names),
        )

    def parity():
        """Direct UNet calls through our DIFFUSION_MODEL wrapper vs the standalone host's outputs."""
        from safetensors.torch import load_file

        ref = load_file(str(Path(base) / "deepcache_reference.safetensors"))
        host = host_module()
        mm.load_models_gpu([model])
        timesteps = ref["timesteps"].tolist()
        sigmas = [float(len(timesteps) - k) for k in range(len(timesteps) + 1)]  # any distinct per-step values
        results = {}
        for branch in sorted({int(k[len("flags") :]) for k in ref if k.startswith("flags")}):
            wrappers = deepcache(model, 3, branch).get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, host.KEY)
            flags = ref[f"flags{branch}"].tolist()
            state = host.RunState(flags, sigmas)
            diffs = {True: 0.0, False: 0.0}
            for k, t in enumerate(timesteps):
                options = {
                    "wrappers": {pe.WrappersMP.DIFFUSION_MODEL: {host.KEY: wrappers}},
                    host.KEY: state,
                    "uuids": ["parity"],
                    "sigmas": torch.tensor([sigmas[k]]),
                }
                with torch.no_grad():
                    out = unet(
                        ref[f"x{k}"], timesteps=torch.tensor([t]), context=ref["context"], transformer_options=options
                    )
                diffs[flags[k]] = max(diffs[flags[k]], max_diff(out, ref[f"out{branch}_{k}"]))
            results[str(branch)] = {
                "full_max_diff": diffs[True],
                "partial_max_diff": diffs[False],
                "scale": max(float(ref[f"out{branch}_{k}"].abs().max()) for k in range(len(timesteps))),
                "stats": state.stats,
            }
        report("parity", **results)

    def reuse_is_exact():
        """A partial call on the input of the full call before it must give that call's output, also when
        ControlNet's middle residual and an output_block_patch (as FreeU) change h in place."""
        host = host_module()
        mm.load_models_gpu([model])
        g = torch.Generator().manual_seed(2)
        x, context = torch.randn(1, 4, 16, 16, generator=g), positive[0][0]
        middle_residual = torch.randn(1, unet.middle_block[-1].out_channels, 8, 8, generator=g)

        def scale_in_place(h, hsp, transformer_options):
            h.mul_(1.5)
            return h, hsp

        results = {}
        for branch in (0, 3):
            wrappers = deepcache(model, 3, branch).get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, host.KEY)
            state = host.RunState([True, False], [2.0, 1.0, 0.0])
            outs = []
            for sigma in (2.0, 1.0):
                options = {
                    "wrappers": {pe.WrappersMP.DIFFUSION_MODEL: {host.KEY: wrappers}},
                    host.KEY: state,
                    "uuids": ["reuse"],
                    "sigmas": torch.tensor([sigma]),
                    "patches": {"output_block_patch": [scale_in_place]},
                }
                with torch.no_grad():
                    outs.append(
                        unet(
                            x,
                            timesteps=torch.tensor([500.0]),
                            context=context,
                            control={"middle": [middle_residual.clone()]},
                            transformer_options=options,
                        )
                    )
            results[str(branch)] = {
                "partial_vs_full": max_diff(outs[1], outs[0]),
                "scale": float(outs[0].abs().max()),
                "stats": state.stats,
            }
        report("reuse", **results)

    def exact_at_interval_1():
        one = deepcache(model, 1)
        chained = deepcache(deepcache(model, 3), 1)  # the last DeepCache in a chain wins
        report(
            "interval_1",
            euler_cfg3=max_diff(ksample(one, steps=3), untouched),
            chained=max_diff(ksample(chained, steps=3), untouched),
            lcmksampler=max_diff(lcm_ksample(one, steps=3), lcm_ksample(model, steps=3)),
            heun=max_diff(ksample(one, "heun", steps=3, cfg=1.0), ksample(model, "heun", steps=3, cfg=1.0)),
            wrappers=len(chained.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, host_module().KEY)),
        )

    def counting_transformers(m):
        """A clone whose attention layers note (block, transformer_index) as GLIGEN would read it."""
        seen = set()

        def note(n, context, value, extra_options):
            seen.add((*extra_options["block"], extra_options["transformer_index"]))
            return n, context, value

        counted = m.clone()
        counted.set_model_attn1_patch(note)
        return counted, seen

    def cached_at_interval_3():
        probed, seen = with_stats(deepcache(model, 3, 0))
        probed, cached_index = counting_transformers(probed)
        plain_model, plain_index = counting_transformers(model)
        steps = 6
        plain = ksample(plain_model, steps=steps)
        cached = ksample(probed, steps=steps)
        rmse = float((cached - plain).pow(2).mean().sqrt())
        value_range = float(plain.max() - plain.min())
        report(
            "interval_3",
            steps=steps,
            stats=seen,
            max_diff=max_diff(cached, plain),
            rmse=rmse,
            plain_std=float(plain.std()),
            value_range=value_range,
            psnr=20 * math.log10(value_range / rmse) if rmse > 0 else None,
            finite=bool(torch.isfinite(cached).all()),
            transformer_index_plain=sorted(plain_index),
            transformer_index_cached=sorted(cached_index),
        )

    def every_sampler():
        dc = deepcache(model, 2, 0)
        results = {}
        for sampler in ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2s_ancestral", "lcm"):
            probed, seen = with_stats(dc)
            out = ksample(probed, sampler, cfg=1.0)  # cfg 1: one batch-1 call per model evaluation
            results[sampler] = {"stats": seen, "finite": bool(torch.isfinite(out).all()), "std": float(out.std())}
        probed, seen = with_stats(dc)
        sigmas = node["LCMAccel_Scheduler"].get_sigmas(probed, 4, 50, 1.0)[0]
        ours = node["LCMAccel_Sampler"].get_sampler(0.0)[0]
        out = node["SamplerCustom"].sample(probed, True, 7, 1.0, positive, negative, ours, sigmas, latent)[0]["samples"]
        results["LCMAccel_Sampler"] = {
            "stats": seen,
            "finite": bool(torch.isfinite(out).all()),
            "std": float(out.std()),
        }
        report("samplers", results=results, blocks_original=blocks_are_original())

    def no_leak():
        dc = deepcache(model, 3, 1)
        big = {"samples": torch.zeros(2, 4, 20, 24)}
        probed, seen = with_stats(dc)
        a1 = ksample(probed, cfg=1.0)
        b = ksample(probed, steps=5, cfg=1.0, lat=big, seed=9)
        a2 = ksample(probed, cfg=1.0)
        again = ksample(model, steps=3)
        report(
            "no_leak",
            a_repeat=max_diff(a1, a2),
            b_shape=list(b.shape),
            b_finite=bool(torch.isfinite(b).all()),
            stats=seen,
            blocks_original=blocks_are_original(),
            input_model_vs_untouched=max_diff(again, untouched),
            input_wrappers=len(model.wrappers.get(pe.WrappersMP.DIFFUSION_MODEL, {})),
        )

    def interrupt():
        dc = deepcache(model, 3, 0)
        reference = ksample(dc, cfg=1.0)
        host = host_module()
        calls, seen_partial = [], []

        def stop_in_third_call(h, hsp, transformer_options):
            if transformer_options["block"] == ("output", 3):
                calls.append(1)
                if len(calls) == 3:  # the third UNet call: partial at interval 3
                    seen_partial.append(not blocks_are_original())
                    mm.interrupt_current_processing(True)
                    mm.throw_exception_if_processing_interrupted()
            return h, hsp

        stopping = dc.clone()
        stopping.set_model_output_block_patch(stop_in_third_call)
        try:
            ksample(stopping, cfg=1.0)
            raised = None
        except mm.InterruptProcessingException:
            raised = "InterruptProcessingException"
        finally:
            mm.interrupt_current_processing(False)
        after = ksample(dc, cfg=1.0)
        report(
            "interrupt",
            raised=raised,
            calls=len(calls),
            shims_in_place_when_stopped=seen_partial,
            blocks_original=blocks_are_original(),
            rerun_vs_before=max_diff(after, reference),
            key=host.KEY,
        )

    def errors():
        messages = {}
        try:
            deepcache(model, 3, 4)
            messages["too_deep"] = None
        except ValueError as error:
            messages["too_deep"] = str(error)

        class NotAUNet:
            class model:
                diffusion_model = torch.nn.Linear(1, 1)

        try:
            deepcache(NotAUNet(), 3, 0)
            messages["not_unet"] = None
        except ValueError as error:
            messages["not_unet"] = str(error)
        report("errors", **messages)

    for name, fn in (
        ("mapping", mapping),
        ("parity", parity),
        ("reuse", reuse_is_exact),
        ("interval_1", exact_at_interval_1),
        ("interval_3", cached_at_interval_3),
        ("samplers", every_sampler),
        ("no_leak", no_leak),
        ("interrupt", interrupt),
        ("errors", errors),
    ):
        run_check(name, fn)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
