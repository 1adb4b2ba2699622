"""Checks of our in-place LoRA route, run INSIDE ComfyUI's interpreter by tests/test_comfyui_inplace.py.

    python tests/comfyui_inplace_checks.py COMFYUI_PATH BASE_DIR [SEQUENCE_STEPS] [compile]

BASE_DIR holds models/diffusion_models/unet.safetensors (SD1.5-detectable) and lcm / style LoRAs in
models/loras/. Every check compares our nodes with ComfyUI's own core LoraLoader route on the same
weights. One "CHECK {json}" line per check.
"""

from __future__ import annotations

import random
import sys

from comfyui_inprocess import report, run_check, start_comfyui


def main(comfyui: str, base: str, steps: int, with_compile: bool) -> None:
    node = start_comfyui(comfyui, base)
    import comfy.model_management as mm
    import comfy.utils
    import torch

    model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
    unet = model.model.diffusion_model
    lcm, style = "lcm.safetensors", "style.safetensors"
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def raw(only=None):
        """The weights as stored right now (no state_dict hooks, no load)."""
        return {k: p.detach().clone() for k, p in unet.named_parameters() if only is None or k in only}

    base = raw()

    def core(m, name, s):
        return node["LoraLoaderModelOnly"].load_lora_model_only(m, name, s)[0]

    def ours(m, *pairs):
        args = []
        for name, s in pairs:
            args += [name, s]
        return node["LCMAccel_AdapterMixer4"].mix(m, *args)[0]

    def loaded(patcher):
        mm.load_models_gpu([patcher])
        return raw()

    def max_diff(a, b, keys=None):
        return max(float((a[k] - b[k]).abs().max()) for k in (keys or a))

    def bitwise(a, b):
        return sum(not torch.equal(a[k], b[k]) for k in a)

    # the deltas of each LoRA at strength 1 through ComfyUI's own route (fp32)
    delta = {}
    for name in (lcm, style, "lcm_attn.safetensors", "style_attn.safetensors"):
        patched = loaded(core(model, name, 1.0))
        delta[name] = {k: patched[k] - base[k] for k in base if not torch.equal(patched[k], base[k])}
    keys = sorted(set(delta[lcm]) | set(delta[style]))
    attn_keys = sorted(set(delta["lcm_attn.safetensors"]) | set(delta["style_attn.safetensors"]))
    scale = max(float(d.abs().max()) for dd in delta.values() for d in dd.values())
    loaded(model)

    def expected(pairs, keys=keys):
        out = {k: base[k].clone() for k in keys}
        for name, s in pairs:
            for k, d in delta[name].items():
                out[k] += s * d
        return out

    def inplace_identity_memory():
        before = {k: (id(p), p.data_ptr()) for k, p in unet.named_parameters()}
        mixed = ours(model, (lcm, 1.0), (style, 0.8))
        node["LCMAccel_KSampler"].sample(mixed, 3, 2, 1.0, positive, negative, latent, 50, 0.0, 1.0)  # a whole prompt
        after = {k: (id(p), p.data_ptr()) for k, p in unet.named_parameters()}
        w_ours = raw()
        controller = model.model.lcm_accel_inplace
        patched_weights = len(controller.applied)
        rel = (
            sum(float((w_ours[k] - base[k]).square().sum()) for k in keys)
            / sum(float(base[k].square().sum()) for k in keys)
        ) ** 0.5
        patched_bytes = sum(a.param.numel() * a.param.element_size() for a in controller.applied.values())
        state_bytes = sum(_state_bytes(a.state) for a in controller.applied.values())
        chained = core(core(model, lcm, 1.0), style, 0.8)
        w_core = loaded(chained)
        moved = [k for k, p in unet.named_parameters() if p.data_ptr() != before[k][1]]
        core_copy_bytes = sum(unet.get_parameter(k).numel() * unet.get_parameter(k).element_size() for k in moved)
        w_plain = loaded(model)
        mm.load_models_gpu([mixed])
        mm.unload_all_models()
        w_unloaded = raw()
        report(
            "inplace_identity_memory",
            params=len(before),
            moved_ours=sum(before[k] != after[k] for k in before),
            patched_weights=patched_weights,
            relative_delta=rel,
            patched_bytes=patched_bytes,
            restore_state_bytes=state_bytes,
            ratio_ours=state_bytes / max(1, patched_bytes),
            core_backups=len(chained.backup) if chained.backup else len(moved),
            ratio_core=core_copy_bytes / max(1, patched_bytes),
            ours_vs_core=max_diff(w_ours, w_core, keys),
            delta_scale=scale,
            plain_after_ours_bitwise_diffs=bitwise(w_plain, base),
            unloaded_bitwise_diffs=bitwise(w_unloaded, base),
        )

    def composition():
        cases = {
            "core_then_ours": (ours(core(model, lcm, 1.0), (style, 0.8)), [(lcm, 1.0), (style, 0.8)]),
            "ours_then_core": (core(ours(model, (lcm, 0.7)), style, 0.8), [(lcm, 0.7), (style, 0.8)]),
            "ours_core_ours": (
                ours(core(ours(model, (lcm, 1.0)), style, 0.5), (lcm, -0.25)),
                [(lcm, 0.75), (style, 0.5)],
            ),
        }
        out = {}
        for label, (patcher, pairs) in cases.items():
            core_chain = model
            for name, s in pairs:
                core_chain = core(core_chain, name, s)
            w_core = loaded(core_chain)
            out[label] = {
                "vs_core_chain": max_diff(loaded(patcher), w_core, keys),
                "vs_formula": max_diff(raw(), expected(pairs), keys),
            }
        out["plain_after_bitwise_diffs"] = bitwise(loaded(model), base)
        report("composition", delta_scale=scale, **out)

    def random_sequences():
        """Prompts over clones of one checkpoint with different LoRA sets (ours, ComfyUI's, both), strengths,
        Cancel while the weights change, unloads; attention-only LoRAs keep each prompt cheap."""
        lcm, style = "lcm_attn.safetensors", "style_attn.safetensors"
        seq_scale = max(float(d.abs().max()) for n in (lcm, style) for d in delta[n].values())
        rng = random.Random(0)
        strengths = (1.0, 0.5, -0.7, 0.8)
        configs = [
            ("plain", lambda s: (model, [])),
            ("core", lambda s: (core(model, lcm, s), [(lcm, s)])),
            ("ours", lambda s: (ours(model, (lcm, s)), [(lcm, s)])),
            ("ours_mix", lambda s: (ours(model, (lcm, s), (style, 0.8)), [(lcm, s), (style, 0.8)])),
            ("core_ours", lambda s: (ours(core(model, lcm, 1.0), (style, s)), [(lcm, 1.0), (style, s)])),
            ("ours_core", lambda s: (core(ours(model, (lcm, s)), style, 0.8), [(lcm, s), (style, 0.8)])),
            ("lcm_loader", lambda s: (node["LCMAccel_LoraLoader"].load_lora(model, lcm, s)[0], [(lcm, s)])),
        ]
        kept: list = []  # earlier clones stay alive and are used again, as in a long ComfyUI session
        worst, interrupted, checked, wrong = 0.0, 0, 0, []
        for step in range(steps):
            if kept and rng.random() < 0.3:
                label, patcher, pairs = rng.choice(kept)
            else:
                label, make = rng.choice(configs)
                patcher, pairs = make(rng.choice(strengths))
                kept = (kept + [(label, patcher, pairs)])[-6:]
            if rng.random() < 0.12:  # Cancel while the weights are being changed
                calls = {"n": 0, "at": rng.randint(1, 20)}

                def hook(*args, **kwargs):
                    calls["n"] += 1
                    if calls["n"] == calls["at"]:
                        mm.interrupt_current_processing(True)

                comfy.utils.set_progress_bar_global_hook(hook)
                try:
                    mm.load_models_gpu([patcher])
                except mm.InterruptProcessingException:
                    interrupted += 1
                finally:
                    mm.interrupt_current_processing(False)
                    comfy.utils.set_progress_bar_global_hook(None)
                continue
            if rng.random() < 0.1:
                mm.unload_all_models()
            mm.load_models_gpu([patcher])
            diff = max_diff(raw(attn_keys), expected(pairs, attn_keys), attn_keys)
            checked += 1
            worst = max(worst, diff)
            if diff > 1e-5 * max(1.0, seq_scale):
                wrong.append((step, label, pairs, diff))
        final = bitwise(loaded(model), base)
        mm.unload_all_models()
        report(
            "random_sequences",
            weights=len(attn_keys),
            steps=steps,
            checked=checked,
            interrupted=interrupted,
            worst=worst,
            delta_scale=seq_scale,
            wrong=wrong[:5],
            n_wrong=len(wrong),
            final_bitwise_diffs=final,
            unloaded_bitwise_diffs=bitwise(raw(), base),
        )

    def torch_compile():
        import torch._dynamo.utils as dynamo_utils

        compiled = node["TorchCompileModel"].execute(model, "inductor")
        compiled = compiled.args[0] if hasattr(compiled, "args") else compiled[0]

        def sample(patcher):
            return node["KSampler"].sample(patcher, 5, 1, 1.0, "euler", "normal", positive, negative, latent)[0][
                "samples"
            ]

        sample(ours(compiled, (lcm, 1.0)))  # compiles; dynamo settles its frames over the first two calls
        first = sample(ours(compiled, (lcm, 1.0)))
        graphs = dynamo_utils.counters["stats"]["unique_graphs"]
        sample(ours(compiled, (lcm, 0.7)))
        second = sample(ours(compiled, (lcm, 0.4)))  # two strength changes, counted
        recompiles = dynamo_utils.counters["stats"]["unique_graphs"] - graphs
        eager = sample(ours(model, (lcm, 0.4)))
        eager_first = sample(ours(model, (lcm, 1.0)))
        report(
            "torch_compile",
            recompiles=recompiles,
            graphs_before=graphs,
            compiled_vs_eager=float((second - eager).abs().max()),
            strength_effect=float((eager - eager_first).abs().max()),
            first_vs_eager=float((first - eager_first).abs().max()),
            scale=float(eager.abs().max()),
        )

    def lycoris():
        """LoHa / LoKr mixed with a LoRA in one node, DoRA alone and on top of a core LoRA: in place, the
        weights ComfyUI's own LoraLoader chain gives."""
        lcm = "lcm_attn.safetensors"
        cases = {
            "loha+lora": (
                ours(model, (lcm, 1.0), ("loha.safetensors", 0.8)),
                core(core(model, lcm, 1.0), "loha.safetensors", 0.8),
            ),
            "lokr+lora": (
                ours(model, (lcm, 0.6), ("lokr.safetensors", 1.0)),
                core(core(model, lcm, 0.6), "lokr.safetensors", 1.0),
            ),
            "dora": (ours(model, ("dora.safetensors", 0.8)), core(model, "dora.safetensors", 0.8)),
            "core_lora_then_dora": (
                ours(core(model, lcm, 1.0), ("dora.safetensors", 1.0)),
                core(core(model, lcm, 1.0), "dora.safetensors", 1.0),
            ),
        }
        out = {}
        for label, (mine, theirs) in cases.items():
            loaded(model)  # ComfyUI's own route puts back Parameters of its own when it unpatches
            ids = {k: id(p) for k, p in unet.named_parameters()}
            w_mine = loaded(mine)
            moved = sum(id(p) != ids[k] for k, p in unet.named_parameters())
            w_theirs = loaded(theirs)
            out[label] = {
                "diff": max_diff(w_mine, w_theirs, attn_keys),
                "delta": max(float((w_theirs[k] - base[k]).abs().max()) for k in attn_keys),
                "moved": moved,
                "core_below": label.startswith("core"),
            }
        report("lycoris", cases=out, plain_after_bitwise_diffs=bitwise(loaded(model), base))

    def fast_mode():
        """LCMAccel_FastMode's capture wrapper, with a CPU stand-in backend (the real ones need CUDA): one
        capture per shape, replays after a strength change read the re-weighted weights."""
        fm = next(m for n, m in sys.modules.items() if n.endswith("hosts.comfyui.fast_mode"))
        graph_cache = next(m for n, m in sys.modules.items() if n.endswith("runtime.graph_cache"))

        class CpuReplay:
            name = "cpu_replay"

            def unsupported(self, device):
                return None

            def capture(self, fn, static_inputs):
                fn(*static_inputs)
                return lambda: fn(*static_inputs)

        on_cpu = node["LCMAccel_FastMode"].apply(model, True, "cuda_graph")[0] is model
        fm.BACKENDS["cpu_replay"] = CpuReplay()

        def sample(patcher):
            return node["LCMAccel_KSampler"].sample(patcher, 5, 2, 1.0, positive, negative, latent, 50, 0.0, 1.0)[0][
                "samples"
            ]

        fast = {s: sample(fm.fast_mode(ours(model, (lcm, s)), None, None, True, "cpu_replay")[0]) for s in (1.0, 0.4)}
        cache = graph_cache.graph_cache(unet, fm.BACKENDS["cpu_replay"])
        eager = {s: sample(ours(model, (lcm, s))) for s in (1.0, 0.4)}
        report(
            "fast_mode",
            cpu_passthrough=on_cpu,
            captures=cache.captures,
            replays=cache.replays,
            diffs=[float((fast[s] - eager[s]).abs().max()) for s in fast],
            strength_effect=float((eager[1.0] - eager[0.4]).abs().max()),
        )

    checks = [
        ("inplace_identity_memory", inplace_identity_memory),
        ("composition", composition),
        ("random_sequences", random_sequences),
        ("lycoris", lycoris),
        ("fast_mode", fast_mode),
    ]
    if with_compile:
        checks.append(("torch_compile", torch_compile))
    for name, fn in checks:
        run_check(name, fn)


def _state_bytes(state) -> int:
    """Bytes of one weight's restore state (every tensor it holds except the LoRA factors)."""
    import torch

    total = getattr(state, "nbytes", None)
    if isinstance(total, int):
        return total
    return sum(
        v.numel() * v.element_size() for k, v in vars(state).items() if isinstance(v, torch.Tensor) and k != "patch"
    )


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]) if len(sys.argv) > 3 else 200,
        len(sys.argv) > 4 and sys.argv[4] == "compile",
    )
