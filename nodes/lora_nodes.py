"""LoRA nodes: the LCM-LoRA loader and the weighted adapter mixer (one patch for N adapters)."""
from __future__ import annotations

from ..hosts import get_host
from .inputs import NONE, check_int, check_lora_choice, check_range

CATEGORY = "LCM Accel"
WEIGHT_RANGE = {"min": -10.0, "max": 10.0, "step": 0.01}
MAX_RANK = 1024


class LCMLoraLoader:
    """Apply an LCM-LoRA and switch the model to LCM sampling, so it runs in 2-8 steps with
    LCMKSampler, SamplerCustom + LCMSampler, or the core KSampler with sampler "lcm"."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to accelerate."}),
                "lora_name": (get_host().lora_names(), {
                    "tooltip": "The LCM-LoRA file (models/loras) distilled for this model's family "
                               "(SD1.5, SDXL or SSD-1B)."}),
                "strength": ("FLOAT", {"default": 1.0, **WEIGHT_RANGE,
                                       "tooltip": "How strongly the LoRA is applied (1.0 = as distilled)."}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the LCM-LoRA applied and LCM sampling enabled.",)
    FUNCTION = "load_lora"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an LCM-LoRA and sets the model's sampling to LCM."

    def load_lora(self, model, lora_name: str, strength: float):
        host = get_host()
        check_lora_choice("LCMLoraLoader", "lora_name", lora_name, host.lora_names(), allow_none=False)
        check_range("LCMLoraLoader", "strength", strength, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
        patched = host.add_loras(model, [(lora_name, float(strength))], None)
        return (host.set_lcm_sampling(patched),)


class LCMAdapterMixer:
    """Mix up to four LoRAs with weights into ONE low-rank patch: theta + sum_i w_i * tau_i
    (e.g. a style LoRA at 0.8 plus the LCM-LoRA at 1.0). Does not change the sampling mode."""

    SLOTS = 4
    DEFAULT_WEIGHTS = (1.0, 0.8, 1.0, 1.0)

    @classmethod
    def INPUT_TYPES(cls):
        loras = get_host().lora_names()
        choices = [NONE] + loras
        required = {"model": ("MODEL", {"tooltip": "The diffusion model the mix is applied to."})}
        for i in range(1, cls.SLOTS + 1):
            default = loras[0] if i == 1 and loras else NONE
            required[f"lora_{i}"] = (choices, {
                "default": default,
                "tooltip": f"LoRA number {i} of the mix (models/loras); None leaves the slot empty."})
            required[f"weight_{i}"] = ("FLOAT", {
                "default": cls.DEFAULT_WEIGHTS[i - 1], **WEIGHT_RANGE,
                "tooltip": f"The weight (lambda) of lora_{i} in the mix."})
        required["rank"] = ("INT", {
            "default": 0, "min": 0, "max": MAX_RANK,
            "tooltip": "0 keeps the full concatenated rank (exact); otherwise the mix is re-compressed "
                       "by SVD to this rank (smaller, approximate)."})
        return {"required": required}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the weighted LoRA mix applied as one patch.",)
    FUNCTION = "mix"
    CATEGORY = CATEGORY
    DESCRIPTION = "Mixes up to four LoRAs with weights into one low-rank patch."

    def mix(self, model, lora_1: str, weight_1: float, lora_2: str = NONE, weight_2: float = 0.8,
            lora_3: str = NONE, weight_3: float = 1.0, lora_4: str = NONE, weight_4: float = 1.0, rank: int = 0):
        host = get_host()
        available = host.lora_names()
        slots = [(lora_1, weight_1), (lora_2, weight_2), (lora_3, weight_3), (lora_4, weight_4)]
        chosen = []
        for i, (name, weight) in enumerate(slots, start=1):
            check_lora_choice("LCMAdapterMixer", f"lora_{i}", name, available, allow_none=True)
            check_range("LCMAdapterMixer", f"weight_{i}", weight, WEIGHT_RANGE["min"], WEIGHT_RANGE["max"])
            if name != NONE:
                chosen.append((name, float(weight)))
        check_int("LCMAdapterMixer", "rank", rank, 0, MAX_RANK)
        if not chosen:
            raise ValueError("LCMAdapterMixer: every lora_1..lora_4 is None; choose at least one LoRA")
        return (host.add_loras(model, chosen, rank or None),)
