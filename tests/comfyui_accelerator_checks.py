"""The accelerator families' exact routes beside ComfyUI's built-in approximations, run INSIDE ComfyUI's
interpreter by tests/test_comfyui_accelerator.py and benchmarks/bench_accelerator_routes.py.

    python tests/comfyui_accelerator_checks.py COMFYUI_PATH BASE_DIR

BASE_DIR as `comfyui_server.sd15_unet_base` writes it. For each route: our LCMAcceleratorKSampler
(the family's exact timesteps and sampler) and ComfyUI's own KSampler with the sampler / scheduler
users pick for that family; the latent PSNR of the built-in one against the exact one, and whether
SamplerCustom + LCMAcceleratorScheduler + LCMAcceleratorSampler equals the one-node route.
"""

from __future__ import annotations

import math
import sys

# (family, steps, cfg, ComfyUI's sampler, ComfyUI's scheduler): the built-in routes the families'
# model cards or users give for ComfyUI
ROUTES = [
    ("lightning", 4, 1.0, "euler", "sgm_uniform"),
    ("dmd2", 4, 1.0, "lcm", "sgm_uniform"),
    ("dmd2", 4, 1.0, "lcm", "normal"),
    ("hyper_sd", 4, 1.0, "ddim", "ddim_uniform"),
    ("hyper_sd", 4, 1.0, "euler", "sgm_uniform"),
    ("pcm", 4, 1.0, "euler", "sgm_uniform"),
    ("tcd", 4, 1.0, "lcm", "sgm_uniform"),
    ("lcm", 4, 1.0, "lcm", "sgm_uniform"),
    ("flash", 4, 1.0, "lcm", "sgm_uniform"),
]


def psnr(reference, other) -> float:
    """Latent PSNR in dB of `other` against `reference`, peak = the reference's value range."""
    mse = float(((reference - other) ** 2).mean())
    peak = float(reference.max() - reference.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def compare_routes(
    node: dict, model, positive, negative, latent, seed: int = 42, routes: list | None = None
) -> list[dict]:
    """One row per route: family, steps, the built-in sampler / scheduler and the PSNR in dB."""
    from lcm_accel.hosts.accelerator_record import with_accelerator_record

    rows = []
    for family, steps, cfg, sampler, scheduler in routes or ROUTES:
        recorded = with_accelerator_record(model, family, "none", None, "benchmark")
        exact = node["LCMAccel_AcceleratorKSampler"].sample(recorded, seed, steps, cfg, positive, negative, latent)[0]
        builtin = node["KSampler"].sample(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent)[0]
        rows.append(
            {
                "family": family,
                "steps": steps,
                "builtin": f"{sampler} + {scheduler}",
                "psnr_db": psnr(exact["samples"].float(), builtin["samples"].float()),
            }
        )
    return rows


def main(comfyui: str, base: str) -> None:
    from comfyui_inprocess import report, run_check, start_comfyui

    node = start_comfyui(comfyui, base)
    import torch

    model = node["UNETLoader"].load_unet("unet.safetensors", "default")[0]
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 4, 32, 32)}

    def routes():
        report("routes", rows=compare_routes(node, model, positive, negative, latent))

    def custom_route():
        from lcm_accel.hosts.accelerator_record import with_accelerator_record

        diffs = {}
        for family in ("hyper_sd", "lightning", "tcd", "dmd2"):
            recorded = with_accelerator_record(model, family, "none", None, "check")
            sigmas = node["LCMAccel_AcceleratorScheduler"].get_sigmas(recorded, "from_model", 4, 1.0)[0]
            sampler = node["LCMAccel_AcceleratorSampler"].get_sampler(recorded, "from_model")[0]
            custom = node["SamplerCustom"].sample(
                model=recorded,
                add_noise=True,
                noise_seed=42,
                cfg=1.0,
                positive=positive,
                negative=negative,
                sampler=sampler,
                sigmas=sigmas,
                latent_image=latent,
            )[0]
            one = node["LCMAccel_AcceleratorKSampler"].sample(recorded, 42, 4, 1.0, positive, negative, latent)[0]
            diffs[family] = float((custom["samples"] - one["samples"]).abs().max())
        report("custom_route", max_diff=diffs)

    def snapped_warning():
        import logging

        said = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logging.getLogger("lcm_accel.accelerator").addHandler(handler)
        from lcm_accel.hosts.accelerator_record import with_accelerator_record

        lcm_mode = node["ModelSamplingDiscrete"].patch(model, "lcm", False)[0]
        for family in ("dmd2", "lcm"):
            recorded = with_accelerator_record(lcm_mode, family, "none", None, "check")
            node["LCMAccel_AcceleratorKSampler"].sample(recorded, 42, 4, 1.0, positive, negative, latent)
        report("snapped_warning", said=said)

    run_check("routes", routes)
    run_check("snapped_warning", snapped_warning)
    run_check("custom_route", custom_route)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
