"""Write the example workflows: `example_workflows/<name>.json` (UI format, drag-and-drop ready) and
`example_workflows/api/<name>.json` (the API-format twin ComfyUI's frontend sends for it).

    python tools/build_workflows.py [--check]

Each graph is described once below; widget order, sockets and output types come from the
nodes' own INPUT_TYPES / RETURN_TYPES (the pack's nodes and the standalone host's core nodes,
which carry ComfyUI's definitions), so the files always match the nodes. `--check` exits 1
if the files on disk differ from what would be written (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "example_workflows"

NEGATIVE = "blurry, low quality, deformed"


def visible_sockets(spec, linked) -> list:
    """The socket inputs the frontend shows: of a growing list (Autogrow), the connected sockets and
    one spare, as a saved workflow holds them."""
    shown = []
    for entry in spec.inputs.values():
        if entry.category == "hidden" or entry.is_widget:
            continue
        group = entry.options.get("autogrow")
        if group is not None and entry.name not in linked:
            connected = sum(1 for name in linked if name.startswith(group["group"] + "."))
            if group["index"] != connected:
                continue
        shown.append(entry)
    return shown


@dataclass(frozen=True)
class Out:
    """Output `slot` of node `node_id` (a link source)."""

    node_id: int
    slot: int


@dataclass
class _Node:
    id: int
    class_type: str
    values: dict[str, Any]
    links: dict[str, Out] = field(default_factory=dict)
    title: str | None = None

    def __getitem__(self, slot: int) -> Out:
        return Out(self.id, slot)


class Graph:
    """A workflow under construction: nodes with widget values and links between them."""

    def __init__(self, registry, note: str):
        self.registry = registry
        self.note = note
        self.nodes: list[_Node] = []

    def add(self, class_type: str, title: str | None = None, **inputs: Any) -> _Node:
        spec = self.registry.spec(class_type)
        unknown = set(inputs) - set(spec.inputs)
        if unknown:
            raise ValueError(f"{class_type} has no inputs {sorted(unknown)}")
        node = _Node(len(self.nodes) + 1, class_type, {}, title=title)
        for name, value in inputs.items():
            (node.links if isinstance(value, Out) else node.values)[name] = value
        self.nodes.append(node)
        return node

    # -- API format -------------------------------------------------------------------------
    def api(self) -> dict:
        from lcm_accel.harness.ui_to_api import frontend_default

        prompt = {}
        for node in self.nodes:
            spec = self.registry.spec(node.class_type)
            inputs: dict[str, Any] = {}
            for widget in spec.widget_inputs():
                if widget.name not in node.links:
                    inputs[widget.name] = node.values.get(widget.name, frontend_default(widget))
            for name, out in node.links.items():
                inputs[name] = [str(out.node_id), out.slot]
            ordered = {name: inputs[name] for name in spec.inputs if name in inputs}
            title = node.title or self.registry.display_name(node.class_type)
            prompt[str(node.id)] = {"inputs": ordered, "class_type": node.class_type, "_meta": {"title": title}}
        return prompt

    # -- UI format --------------------------------------------------------------------------
    def ui(self) -> dict:
        from lcm_accel.harness.ui_to_api import frontend_default

        links, ui_nodes = [], []
        outgoing: dict[tuple[int, int], list[int]] = {}
        incoming: dict[tuple[int, str], int] = {}
        for node in self.nodes:
            spec = self.registry.spec(node.class_type)
            sockets = visible_sockets(spec, node.links)
            for name, out in node.links.items():
                source = self.registry.spec(self.nodes[out.node_id - 1].class_type)
                slot = [s.name for s in sockets].index(name) if name in [s.name for s in sockets] else None
                if slot is None:
                    raise ValueError(f"{node.class_type}.{name} is a widget; this builder links sockets only")
                link_id = len(links) + 1
                links.append([link_id, out.node_id, out.slot, node.id, slot, source.return_types[out.slot]])
                outgoing.setdefault((out.node_id, out.slot), []).append(link_id)
                incoming[(node.id, name)] = link_id
        depth = self._depths()
        rows: dict[int, int] = {}
        for order, node in enumerate(self.nodes):
            spec = self.registry.spec(node.class_type)
            column = depth[node.id]
            row = rows.get(column, 0)
            rows[column] = row + 1
            widgets = []
            for widget in spec.widget_inputs():
                widgets.append(node.values.get(widget.name, frontend_default(widget)))
                if widget.has_control_widget:
                    widgets.append("fixed")
            entry = {
                "id": node.id,
                "type": node.class_type,
                "pos": [60 + 360 * column, 80 + 260 * row],
                "size": [320, 120 + 26 * len(widgets)],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": [
                    {"name": s.name, "type": s.type, "link": incoming.get((node.id, s.name))}
                    for s in visible_sockets(spec, node.links)
                ],
                "outputs": [
                    {"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot}
                    for slot, (name, kind) in enumerate(zip(spec.return_names, spec.return_types))
                ],
                "properties": {"Node name for S&R": node.class_type},
                "widgets_values": widgets,
            }
            if node.title:
                entry["title"] = node.title
            ui_nodes.append(entry)
        note_id = len(self.nodes) + 1
        ui_nodes.append(
            {
                "id": note_id,
                "type": "Note",
                "pos": [60, -200],
                "size": [700, 160],
                "flags": {},
                "order": len(self.nodes),
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "properties": {"text": ""},
                "widgets_values": [self.note],
            }
        )
        return {
            "last_node_id": note_id,
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4,
        }

    def _depths(self) -> dict[int, int]:
        depth: dict[int, int] = {}
        for node in self.nodes:  # nodes are added after their sources
            depth[node.id] = max((depth[o.node_id] + 1 for o in node.links.values()), default=0)
        return depth


def _prompts(g: Graph, clip: Out, positive: str) -> tuple[_Node, _Node]:
    return (
        g.add("CLIPTextEncode", "Positive prompt", clip=clip, text=positive),
        g.add("CLIPTextEncode", "Negative prompt", clip=clip, text=NEGATIVE),
    )


def _lcm_txt2img(
    registry, note: str, name: str, checkpoint: str, lora: str, prompt: str, size: int, gamma: float
) -> Graph:
    """Checkpoint -> LCMLoraLoader -> LCMKSampler (4 steps, cfg 1.0) -> VAEDecode -> SaveImage."""
    g = Graph(registry, note)
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    model = g.add("LCMAccel_LoraLoader", model=ckpt[0], lora_name=lora, strength=1.0)
    pos, neg = _prompts(g, ckpt[1], prompt)
    latent = g.add("EmptyLatentImage", width=size, height=size, batch_size=1)
    sampled = g.add(
        "LCMAccel_KSampler",
        model=model[0],
        seed=42,
        steps=4,
        cfg=1.0,
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        original_inference_steps=50,
        gamma=gamma,
        denoise=1.0,
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix=name)
    return g


def lcm_lora_txt2img(registry) -> Graph:
    return _lcm_txt2img(
        registry,
        "SD1.5 + LCM-LoRA, text to image in 4 steps at cfg 1.0 (one UNet pass per step).\n"
        "LCM-LoRA works with any SD1.5 fine-tune: swap the checkpoint. Good settings: 4-8 steps, cfg 1-2.",
        "lcm_lora_txt2img",
        "v1-5-pruned-emaonly.safetensors",
        "lcm-lora-sdv1-5.safetensors",
        "a beautiful landscape with a lake and mountains at sunset, detailed",
        512,
        0.0,
    )


def lcm_lora_sdxl(registry) -> Graph:
    return _lcm_txt2img(
        registry,
        "SDXL + LCM-LoRA (SDXL), 4 steps at cfg 1.0, 1024x1024.",
        "lcm_lora_sdxl",
        "sd_xl_base_1.0.safetensors",
        "lcm-lora-sdxl.safetensors",
        "a photo of a red house in a green forest, detailed, best quality",
        1024,
        0.0,
    )


def tcd_txt2img(registry) -> Graph:
    return _lcm_txt2img(
        registry,
        "TCD (trajectory consistency distillation) sampling: gamma 0.3 re-injects part of the "
        "noise at every step, which keeps detail at higher step counts. Works with the LCM-LoRA and with "
        "TCD LoRAs (swap the file). gamma 0 is plain LCM.",
        "tcd_txt2img",
        "v1-5-pruned-emaonly.safetensors",
        "lcm-lora-sdv1-5.safetensors",
        "a picture of a small bird on a tree, detailed",
        512,
        0.3,
    )


def lcm_lora_style_mixer(registry) -> Graph:
    g = Graph(
        registry,
        "LCM-LoRA + a style LoRA mixed into ONE low-rank patch (lambda 1.0 / 0.8, as in the LCM-LoRA paper), "
        "sampled with SamplerCustom + LCM Scheduler + LCM Sampler.\nEach LoRA Row is one LoRA with its model "
        "and clip strengths; connecting a row to the mixer adds another socket (a LORA_STACK from a stack "
        "node fits too). rank 0 keeps the full concatenated rank; a smaller rank re-compresses the mix by "
        "SVD. The CLIP goes through the mixer too: a LoRA's text-encoder part is applied at its clip "
        "strength (LCM-LoRA has none).",
    )
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    lcm = g.add("LCMAccel_LoraRow", lora_name="lcm-lora-sdv1-5.safetensors", model_strength=1.0, clip_strength=1.0)
    style = g.add("LCMAccel_LoraRow", lora_name="style-lora-sd15.safetensors", model_strength=0.8, clip_strength=0.8)
    mixed = g.add(
        "LCMAccel_AdapterMixer",
        model=ckpt[0],
        rank=0,
        clip=ckpt[1],
        **{"loras.lora0": lcm[0], "loras.lora1": style[0]},
    )
    pos, neg = _prompts(g, mixed[1], "a portrait of a cat, oil painting style")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    sigmas = g.add("LCMAccel_Scheduler", model=mixed[0], steps=4, original_inference_steps=50, strength=1.0)
    sampler = g.add("LCMAccel_Sampler", gamma=0.0)
    sampled = g.add(
        "SamplerCustom",
        model=mixed[0],
        add_noise=True,
        noise_seed=42,
        cfg=1.0,
        positive=pos[0],
        negative=neg[0],
        sampler=sampler[0],
        sigmas=sigmas[0],
        latent_image=latent[0],
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix="lcm_lora_style_mixer")
    return g


def lcm_lora_img2img(registry) -> Graph:
    g = Graph(
        registry,
        "Image to image with LCM-LoRA: denoise 0.6 keeps the composition of input/example.png. "
        "LCM img2img uses the paper's schedule restricted to the lower 60% of the noise levels.",
    )
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    model = g.add("LCMAccel_LoraLoader", model=ckpt[0], lora_name="lcm-lora-sdv1-5.safetensors", strength=1.0)
    pos, neg = _prompts(g, ckpt[1], "a watercolor painting of a flower, detailed")
    loaded = g.add("LoadImage", image="example.png")
    encoded = g.add("VAEEncode", pixels=loaded[0], vae=ckpt[2])
    sampled = g.add(
        "LCMAccel_KSampler",
        model=model[0],
        seed=42,
        steps=4,
        cfg=1.0,
        positive=pos[0],
        negative=neg[0],
        latent_image=encoded[0],
        original_inference_steps=50,
        gamma=0.0,
        denoise=0.6,
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix="lcm_lora_img2img")
    return g


def baseline_25step_cfg7(registry) -> Graph:
    g = Graph(
        registry,
        "Baseline for comparison: ComfyUI's default graph, 25 Euler steps at cfg 7 (50 UNet passes) without LCM-LoRA.",
    )
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos, neg = _prompts(g, ckpt[1], "a beautiful landscape with a lake and mountains at sunset, detailed")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = g.add(
        "KSampler",
        model=ckpt[0],
        seed=42,
        steps=25,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        denoise=1.0,
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix="baseline_25step_cfg7")
    return g


def lcm_lora_deepcache(registry) -> Graph:
    g = Graph(
        registry,
        "LCM-LoRA + DeepCache: 8 LCM steps, every 2nd one a full UNet pass; the others reuse the "
        "deep features of the last full step and run only the outermost layers (cache_depth 0, about 7% "
        "of a full pass on SD1.5), so the run costs about 4.3 full passes instead of 8. Raise cache_depth "
        "to keep closer to the uncached image; cache_interval 1 turns caching off.",
    )
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    lcm = g.add("LCMAccel_LoraLoader", model=ckpt[0], lora_name="lcm-lora-sdv1-5.safetensors", strength=1.0)
    cached = g.add(
        "LCMAccel_DeepCache",
        model=lcm[0],
        cache_interval=2,
        cache_depth=0,
        start_percent=0.0,
        end_percent=1.0,
        schedule="uniform",
    )
    pos, neg = _prompts(g, ckpt[1], "a cozy cabin in a snowy forest at night, warm light, detailed")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = g.add(
        "LCMAccel_KSampler",
        model=cached[0],
        seed=42,
        steps=8,
        cfg=1.0,
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        original_inference_steps=50,
        gamma=0.0,
        denoise=1.0,
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix="lcm_lora_deepcache")
    return g


def lcm_lora_quantized(registry) -> Graph:
    g = Graph(
        registry,
        "LCM-LoRA merged into the UNet, then the UNet quantized to int8 weights (LCMQuantizeUNet: "
        "per output channel, about 1/4 of the fp32 weight memory, 1/2 of fp16); conv_in, conv_out and the "
        "time embedding stay in high precision ('default' keep-list). 4 LCM steps at cfg 1.0. Load LoRAs "
        "BEFORE the quantize node: they are merged, then quantized with the weights.",
    )
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    lcm = g.add("LCMAccel_LoraLoader", model=ckpt[0], lora_name="lcm-lora-sdv1-5.safetensors", strength=1.0)
    quantized = g.add(
        "LCMAccel_QuantizeUNet", model=lcm[0], format="int8", keep="default", group_size=64, keep_source=False
    )
    pos, neg = _prompts(g, ckpt[1], "a lighthouse on a rocky coast at dawn, detailed")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = g.add(
        "LCMAccel_KSampler",
        model=quantized[0],
        seed=42,
        steps=4,
        cfg=1.0,
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        original_inference_steps=50,
        gamma=0.0,
        denoise=1.0,
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix="lcm_lora_quantized")
    return g


def _accelerator(
    registry, note: str, family: str, checkpoint: str, lora: str, prompt: str, size: int, steps: int, cfg: float
) -> Graph:
    """Checkpoint -> LCMAcceleratorLoader (family auto) -> LCMAcceleratorKSampler (the family's exact
    schedule and sampler) -> VAEDecode -> SaveImage."""
    g = Graph(registry, note)
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=checkpoint)
    model = g.add(
        "LCMAccel_AcceleratorLoader",
        model=ckpt[0],
        lora_name=lora,
        family="auto",
        strength=1.0,
        clip=ckpt[1],
        strength_clip=1.0,
    )
    pos, neg = _prompts(g, model[1], prompt)
    latent = g.add("EmptyLatentImage", width=size, height=size, batch_size=1)
    sampled = g.add(
        "LCMAccel_AcceleratorKSampler",
        model=model[0],
        seed=42,
        steps=steps,
        cfg=cfg,
        positive=pos[0],
        negative=neg[0],
        latent_image=latent[0],
        family="from_model",
        denoise=1.0,
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix=f"accelerator_{family}")
    return g


SD15, SDXL = "v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"


def accelerator_tcd(registry) -> Graph:
    return _accelerator(
        registry,
        "TCD-LoRA (h1t/TCD-SD15): TCD sampling with gamma 0.3 on LCM's timesteps, 4 steps, "
        "cfg 1 (the model card: TCDScheduler, eta 0.3, guidance 0).",
        "tcd",
        SD15,
        "tcd-sd15-lora.safetensors",
        "a picture of a small bird on a tree, detailed",
        512,
        4,
        1.0,
    )


def accelerator_hyper_sd(registry) -> Graph:
    return _accelerator(
        registry,
        "Hyper-SD 4-step LoRA (ByteDance/Hyper-SD): deterministic DDIM on the trailing "
        "timesteps 999/749/499/249, cfg 1. Use the file's own step count (2, 4 or 8).",
        "hyper_sd",
        SD15,
        "Hyper-SD15-4steps-lora.safetensors",
        "a red sports car on a mountain road, detailed",
        512,
        4,
        1.0,
    )


def accelerator_hyper_sd_unified(registry) -> Graph:
    return _accelerator(
        registry,
        "Hyper-SD 1-step unified LoRA: TCD with eta (gamma) 1.0, one step from pure noise, "
        "cfg 1; the same LoRA runs 1-8 steps (lower gamma keeps more detail at more steps).",
        "hyper_sd_unified",
        SD15,
        "Hyper-SD15-1step-lora.safetensors",
        "a bowl of fruit on a wooden table, detailed",
        512,
        1,
        1.0,
    )


def accelerator_hyper_sd_cfg(registry) -> Graph:
    g = Graph(
        registry,
        "Hyper-SD CFG-preserving 8-step LoRA: DDIM trailing with a real cfg (5, range 5-8) and a "
        "negative prompt, through SamplerCustom + LCMAcceleratorScheduler + LCMAcceleratorSampler.",
    )
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=SD15)
    model = g.add(
        "LCMAccel_AcceleratorLoader",
        model=ckpt[0],
        lora_name="Hyper-SD15-8steps-CFG-lora.safetensors",
        family="auto",
        strength=1.0,
        clip=ckpt[1],
        strength_clip=1.0,
    )
    pos, neg = _prompts(g, model[1], "a portrait of an old sailor, dramatic light, detailed")
    latent = g.add("EmptyLatentImage", width=512, height=512, batch_size=1)
    sigmas = g.add("LCMAccel_AcceleratorScheduler", model=model[0], family="from_model", steps=8, denoise=1.0)
    sampler = g.add("LCMAccel_AcceleratorSampler", model=model[0], family="from_model")
    sampled = g.add(
        "SamplerCustom",
        model=model[0],
        add_noise=True,
        noise_seed=42,
        cfg=5.0,
        positive=pos[0],
        negative=neg[0],
        sampler=sampler[0],
        sigmas=sigmas[0],
        latent_image=latent[0],
    )
    image = g.add("VAEDecode", samples=sampled[0], vae=ckpt[2])
    g.add("SaveImage", images=image[0], filename_prefix="accelerator_hyper_sd_cfg")
    return g


def accelerator_lightning(registry) -> Graph:
    return _accelerator(
        registry,
        "SDXL-Lightning 4-step LoRA (ByteDance/SDXL-Lightning): Euler on the trailing "
        "timesteps, cfg 1, 1024x1024 (ComfyUI's euler + sgm_uniform only approximates them).",
        "lightning",
        SDXL,
        "sdxl_lightning_4step_lora.safetensors",
        "a girl smiling, portrait photo, detailed",
        1024,
        4,
        1.0,
    )


def accelerator_dmd2(registry) -> Graph:
    return _accelerator(
        registry,
        "DMD2 4-step LoRA (tianweiy/DMD2): LCM sampling on the authors' timesteps "
        "999/749/499/249 (not LCM's 999/759/499/259), cfg 1, 1024x1024.",
        "dmd2",
        SDXL,
        "dmd2_sdxl_4step_lora_fp16.safetensors",
        "a photo of a cat in a garden, detailed",
        1024,
        4,
        1.0,
    )


def accelerator_pcm(registry) -> Graph:
    return _accelerator(
        registry,
        "PCM small-cfg 4-step LoRA (G-U-N/Phased-Consistency-Model): deterministic DDIM "
        "on the trailing timesteps, cfg 1 (1-2).",
        "pcm",
        SD15,
        "pcm_sd15_smallcfg_4step_converted.safetensors",
        "a castle on a hill under a starry sky, detailed",
        512,
        4,
        1.0,
    )


def accelerator_flash(registry) -> Graph:
    return _accelerator(
        registry,
        "Flash Diffusion LoRA (jasperai/flash-sd): LCM sampling, 4 steps, cfg 1.",
        "flash",
        SD15,
        "flash-sd-lora.safetensors",
        "a hot air balloon over green hills, detailed",
        512,
        4,
        1.0,
    )


ACCELERATOR_BUILDERS = (
    accelerator_tcd,
    accelerator_hyper_sd,
    accelerator_hyper_sd_unified,
    accelerator_hyper_sd_cfg,
    accelerator_lightning,
    accelerator_dmd2,
    accelerator_pcm,
    accelerator_flash,
)

BUILDERS = (
    lcm_lora_txt2img,
    lcm_lora_style_mixer,
    lcm_lora_sdxl,
    lcm_lora_img2img,
    tcd_txt2img,
    baseline_25step_cfg7,
    lcm_lora_deepcache,
    lcm_lora_quantized,
    *ACCELERATOR_BUILDERS,
)


def render(registry) -> dict[Path, str]:
    """File path -> JSON text for every example workflow and its API twin."""
    files = {}
    for build in BUILDERS:
        graph = build(registry)
        files[WORKFLOWS / f"{build.__name__}.json"] = json.dumps(graph.ui(), indent=2) + "\n"
        files[WORKFLOWS / "api" / f"{build.__name__}.json"] = json.dumps(graph.api(), indent=2) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    parser.add_argument("--models", help="models folder whose file lists fill the combos (default: the demo's)")
    args = parser.parse_args(argv)
    from lcm_accel.fixtures.demo_models import demo_models_dir
    from lcm_accel.harness.registry import default_registry
    from lcm_accel.runtime.model_paths import ModelPaths, use_model_paths

    root = Path(args.models) if args.models else demo_models_dir()
    with use_model_paths(ModelPaths(root / "models", input_dir=root / "input")):
        files = render(default_registry())
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
