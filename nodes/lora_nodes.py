"""LoRA nodes: the LCM-LoRA loader and the weighted adapter mixer (one patch for N adapters).

The mixer grows a socket per LoRA (V3 Autogrow); each takes a LORA_STACK: a LoRA Row node (lora,
model strength, clip strength), or the stacks of Efficiency Nodes / Comfyroll / Easy-Use / TinyTerra.
The first mixer, with four fixed slots, stays for saved workflows. Loader and mixers take an optional
CLIP, as ComfyUI's LoraLoader does with its separate model and clip strengths: a LoRA's text-encoder
part (`lora_te*` / `text_encoder*`) goes to the CLIP output at the clip strength; with no CLIP
connected the CLIP output is None.
"""

from __future__ import annotations

from ..hosts import get_host
from ..hosts.node_declaration import CATEGORY, autogrow_inputs, autogrow_values
from .accelerator_guard import record_mix_families
from .inputs import NONE, check_int, check_lora_choice, check_lora_stack, check_range

WEIGHT_RANGE = {"min": -10.0, "max": 10.0, "step": 0.01}
MAX_RANK = 1024
LORA_STACK = "LORA_STACK"
MIXER_OUTPUT_TOOLTIPS = (  # both mixers: the 4-slot one and the one with growing rows
    "The model with the weighted LoRA mix applied as one patch.",
    "The CLIP with the LoRAs' text-encoder parts (None when no CLIP is connected).",
)


def clip_input() -> tuple:
    return (
        "CLIP",
        {
            "tooltip": "Optional: the CLIP whose text encoder(s) get the LoRAs' text-encoder part "
            "(lora_te*, as the core LoraLoader applies it). Unconnected: MODEL only, and "
            "the CLIP output is empty."
        },
    )


def add_clip_part(host, clip, loras: list[tuple[str, float]]):
    """The CLIP output: `clip` with the LoRAs' text-encoder parts at their clip weights (zero weights
    add nothing); an unconnected CLIP stays None."""
    loras = [(name, weight) for name, weight in loras if weight != 0.0]
    if clip is None or not loras:
        return clip
    return host.add_clip_loras(clip, loras)


class LCMLoraLoader:
    """Apply an LCM-LoRA and switch the model to LCM sampling, so it runs in 2-8 steps with
    LCMKSampler, SamplerCustom + LCMSampler, or the core KSampler with sampler "lcm"."""

    NODE_ID = "LCMAccel_LoraLoader"
    DISPLAY_NAME = "LCM-LoRA Loader"
    SEARCH_ALIASES = ("lcm", "lcm-lora", "lora", "latent consistency", "fast")
    OLD_IDS = ("LCMLoraLoader",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to accelerate."}),
                "lora_name": (
                    get_host().lora_names(),
                    {
                        "tooltip": "The LCM-LoRA file (models/loras) distilled for this model's family "
                        "(SD1.5, SDXL or SSD-1B)."
                    },
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        **WEIGHT_RANGE,
                        "tooltip": "How strongly the LoRA is applied (1.0 = as distilled).",
                    },
                ),
            },
            "optional": {
                "clip": clip_input(),
                "strength_clip": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        **WEIGHT_RANGE,
                        "tooltip": "How strongly the LoRA's text-encoder part (if it has one) is applied to the CLIP.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = (
        "The model with the LCM-LoRA applied and LCM sampling enabled.",
        "The CLIP with the LoRA's text-encoder part (None when no CLIP is connected).",
    )
    FUNCTION = "load_lora"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an LCM-LoRA and sets the model's sampling to LCM."

    def load_lora(self, model, lora_name: str, strength: float, clip=None, strength_clip: float = 1.0):
        node = self.NODE_ID
        host = get_host()
        check_lora_choice(node, "lora_name", lora_name, host.lora_names(), allow_none=False)
        check_range(node, "strength", strength, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        check_range(node, "strength_clip", strength_clip, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        patched = host.add_loras(model, [(lora_name, float(strength))], None)
        return (host.set_lcm_sampling(patched), add_clip_part(host, clip, [(lora_name, float(strength_clip))]))


class LCMAdapterMixer:
    """The first mixer, with four fixed LoRA slots (and a LORA_STACK): theta + sum_i w_i * tau_i. Kept so
    that saved workflows load and run unchanged; new graphs use the LCM Adapter Mixer's growing rows."""

    NODE_ID = "LCMAccel_AdapterMixer4"
    DISPLAY_NAME = "LCM Adapter Mixer (4 slots, legacy)"
    SEARCH_ALIASES = ()
    OLD_IDS = ("LCMAdapterMixer",)
    DEPRECATED = True

    SLOTS = 4
    DEFAULT_WEIGHTS = (1.0, 0.8, 1.0, 1.0)

    @classmethod
    def INPUT_TYPES(cls):
        loras = get_host().lora_names()
        choices = [NONE] + loras
        required = {"model": ("MODEL", {"tooltip": "The diffusion model the mix is applied to."})}
        for i in range(1, cls.SLOTS + 1):
            default = loras[0] if i == 1 and loras else NONE
            required[f"lora_{i}"] = (
                choices,
                {
                    "default": default,
                    "tooltip": f"LoRA number {i} of the mix (models/loras); None leaves the slot empty.",
                },
            )
            required[f"weight_{i}"] = (
                "FLOAT",
                {
                    "default": cls.DEFAULT_WEIGHTS[i - 1],
                    **WEIGHT_RANGE,
                    "tooltip": f"The weight (lambda) of lora_{i} in the mix.",
                },
            )
        required["rank"] = (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": MAX_RANK,
                "tooltip": "0 keeps the full concatenated rank (exact); otherwise the mix is re-compressed "
                "by SVD to this rank (smaller, approximate).",
            },
        )
        # new inputs are optional and come last, so workflows saved before them keep their widget order
        optional = {
            "clip": clip_input(),
            "lora_stack": (
                LORA_STACK,
                {
                    "tooltip": "Optional LORA_STACK (list of (lora_name, model_strength, "
                    "clip_strength), e.g. from Efficiency Nodes, Comfyroll, Easy-Use "
                    "or TinyTerra stack nodes), mixed into the same single patch."
                },
            ),
        }
        for i in range(1, cls.SLOTS + 1):
            optional[f"clip_weight_{i}"] = (
                "FLOAT",
                {
                    "default": cls.DEFAULT_WEIGHTS[i - 1],
                    **WEIGHT_RANGE,
                    "tooltip": f"The strength of lora_{i}'s text-encoder part on the CLIP (if connected).",
                },
            )
        return {"required": required, "optional": optional}

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = MIXER_OUTPUT_TOOLTIPS
    FUNCTION = "mix"
    CATEGORY = CATEGORY
    DESCRIPTION = "Mixes up to four LoRAs (and a LORA_STACK) with weights into one low-rank patch."

    def mix(
        self,
        model,
        lora_1: str,
        weight_1: float,
        lora_2: str = NONE,
        weight_2: float = 0.8,
        lora_3: str = NONE,
        weight_3: float = 1.0,
        lora_4: str = NONE,
        weight_4: float = 1.0,
        rank: int = 0,
        clip=None,
        lora_stack=None,
        clip_weight_1: float = 1.0,
        clip_weight_2: float = 0.8,
        clip_weight_3: float = 1.0,
        clip_weight_4: float = 1.0,
    ):
        node = self.NODE_ID
        available = get_host().lora_names()
        slots = [
            (lora_1, weight_1, clip_weight_1),
            (lora_2, weight_2, clip_weight_2),
            (lora_3, weight_3, clip_weight_3),
            (lora_4, weight_4, clip_weight_4),
        ]
        entries = []
        for i, (name, weight, clip_weight) in enumerate(slots, start=1):
            check_lora_choice(node, f"lora_{i}", name, available, allow_none=True)
            check_range(node, f"weight_{i}", weight, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
            check_range(node, f"clip_weight_{i}", clip_weight, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
            if name != NONE:
                entries.append((name, float(weight), float(clip_weight)))
        entries += check_lora_stack(node, "lora_stack", lora_stack, available)
        if not entries:
            raise ValueError(f"{node}: every lora_1..lora_4 is None and lora_stack is empty; choose at least one LoRA")
        return mix_entries(node, model, clip, entries, rank)


def mix_entries(node: str, model, clip, entries: list[tuple[str, float, float]], rank: int):
    """(MODEL, CLIP) with `entries` ((lora, model weight, clip weight), checked) mixed into one patch:
    what both mixers do once they have read their inputs."""
    check_int(node, "rank", rank, 0, MAX_RANK)
    host = get_host()
    # a weight of 0 beside others stays in the mix (turning it up later is an in-place re-weight);
    # a mix whose every model weight is 0 changes nothing: the input MODEL comes back
    model_loras = [(name, weight) for name, weight, _ in entries]
    new_model = host.add_loras(model, model_loras, rank or None) if any(w for _, w in model_loras) else model
    if new_model is not model:
        new_model = record_mix_families(host, model, new_model, [name for name, weight in model_loras if weight])
    return (new_model, add_clip_part(host, clip, [(name, weight) for name, _, weight in entries]))


class LCMLoraRow:
    """One row of the LCM Adapter Mixer: a LoRA with its model and clip strengths, as a LORA_STACK."""

    NODE_ID = "LCMAccel_LoraRow"
    DISPLAY_NAME = "LoRA Row"
    SEARCH_ALIASES = ("lora", "lora stack", "mixer row")
    OLD_IDS = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": (get_host().lora_names(), {"tooltip": "The LoRA file (models/loras)."}),
                "model_strength": (
                    "FLOAT",
                    {"default": 1.0, **WEIGHT_RANGE, "tooltip": "Its weight (lambda) on the MODEL in the mix."},
                ),
                "clip_strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        **WEIGHT_RANGE,
                        "tooltip": "The weight of its text-encoder part on the CLIP (if the mixer has one).",
                    },
                ),
            }
        }

    RETURN_TYPES = (LORA_STACK,)
    OUTPUT_TOOLTIPS = ("A LORA_STACK holding this one (lora_name, model_strength, clip_strength).",)
    FUNCTION = "row"
    CATEGORY = CATEGORY
    DESCRIPTION = "One LoRA and its strengths, for a socket of the LCM Adapter Mixer (or any LORA_STACK input)."

    def row(self, lora_name: str, model_strength: float, clip_strength: float):
        node = self.NODE_ID
        check_lora_choice(node, "lora_name", lora_name, get_host().lora_names(), allow_none=False)
        check_range(node, "model_strength", model_strength, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        check_range(node, "clip_strength", clip_strength, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        return ([(lora_name, float(model_strength), float(clip_strength))],)


class LCMAdapterMixerRows:
    """Mix any number of LoRAs with weights into ONE low-rank patch: theta + sum_i w_i * tau_i. Each
    socket takes a LORA_STACK (a LoRA Row, or a stack node of another pack); a new empty socket appears
    when one is connected. Does not change the sampling mode."""

    NODE_ID = "LCMAccel_AdapterMixer"
    DISPLAY_NAME = "LCM Adapter Mixer"
    SEARCH_ALIASES = ("lcm", "lora", "mix", "lora stack", "style", "merge loras")
    OLD_IDS = ()
    ROWS = 16

    @classmethod
    def INPUT_TYPES(cls):
        rows_required, rows_optional = autogrow_inputs(
            "loras",
            "lora",
            LORA_STACK,
            "A LoRA of the mix: a LoRA Row (lora, model strength, clip strength) or any LORA_STACK; "
            "connecting one adds another socket.",
            minimum=1,
            maximum=cls.ROWS,
        )
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the mix is applied to."}),
                **rows_required,
                "rank": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_RANK,
                        "advanced": True,
                        "tooltip": "0 keeps the full concatenated rank (exact); otherwise the mix is "
                        "re-compressed by SVD to this rank (smaller, approximate).",
                    },
                ),
            },
            "optional": {"clip": clip_input(), **rows_optional},
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = MIXER_OUTPUT_TOOLTIPS
    FUNCTION = "mix"
    CATEGORY = CATEGORY
    DESCRIPTION = "Mixes any number of LoRAs (one LoRA Row or LORA_STACK per socket) into one low-rank patch."

    def mix(self, model, rank: int = 0, clip=None, **loras):
        node = self.NODE_ID
        available = get_host().lora_names()
        entries = []
        for index, stack in enumerate(autogrow_values("loras", loras)):
            entries += check_lora_stack(node, f"loras.lora{index}", stack, available)
        if not entries:
            raise ValueError(f"{node}: no LoRA connected; connect a LoRA Row (or a LORA_STACK) to loras.lora0")
        return mix_entries(node, model, clip, entries, rank)
