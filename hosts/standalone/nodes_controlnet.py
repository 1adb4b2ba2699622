"""ControlNet nodes (ComfyUI's ControlNetLoader, ControlNetApplyAdvanced and the older ControlNetApply).

CONTROL_NET is a `runtime.controlnet_files.LoadedControlNet` (SD1.5 / SDXL, original LDM or
diffusers layout). ControlNetApplyAdvanced attaches an `AppliedControl` to every entry of both
conditionings, chained to the control an entry already had; the sampler runs it
(`controlnet.ControlRun`). ControlNetApply attaches one to a single conditioning for the whole
schedule and marks it `control_apply_to_uncond`: at sampling time a negative without ControlNets
gets the positive's (`controlnet.with_uncond_controls`), as in ComfyUI.
"""

from __future__ import annotations


def _model_paths():
    from ...runtime.model_paths import get_model_paths

    return get_model_paths()


class ControlNetLoader:
    """CONTROL_NET from a ControlNet file in models/controlnet."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": (_model_paths().get_filename_list("controlnet"),)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    def load_controlnet(self, control_net_name: str):
        from ...runtime.checkpoint_config import CheckpointFormatError
        from ...runtime.controlnet_files import load_controlnet_file

        path = _model_paths().get_full_path("controlnet", control_net_name)
        try:
            return (load_controlnet_file(path),)
        except CheckpointFormatError as error:
            raise CheckpointFormatError(f"ControlNetLoader: control_net_name {control_net_name!r}: {error}") from None


def _entries(node: str, name: str, conditioning) -> list:
    if not isinstance(conditioning, list) or not all(
        isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[1], dict) for e in conditioning
    ):
        raise TypeError(f"{node}: {name} is not a CONDITIONING (a list of [tensor, options] entries)")
    return conditioning


def attach_control(
    node: str,
    conditionings: dict[str, list],
    control_net,
    image,
    strength: float,
    start_percent: float,
    end_percent: float,
    apply_to_uncond: bool,
) -> list[list]:
    """The conditionings (name -> CONDITIONING, in order) with a ControlNet attached to every entry,
    each chained to the entry's previous control (one new control per previous one, shared by all
    entries that had it); strength 0 returns them unchanged. Errors name `node` and the input."""
    import torch

    from ...runtime.controlnet_files import LoadedControlNet
    from .controlnet import AppliedControl

    if not isinstance(control_net, LoadedControlNet):
        raise TypeError(f"{node}: control_net must come from ControlNetLoader, got {type(control_net).__name__}")
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{node}: {name} {value} is outside 0..1")
    if not 0.0 <= float(strength) <= 10.0:
        raise ValueError(f"{node}: strength {strength} is outside 0..10")
    entries = {name: _entries(node, name, conds) for name, conds in conditionings.items()}
    if float(strength) == 0.0:
        return list(entries.values())  # as ComfyUI: nothing attached
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise TypeError(f"{node}: image must be an IMAGE (batch, height, width, channels)")
    if image.shape[-1] != control_net.hint_channels:
        raise ValueError(
            f"{node}: image has {image.shape[-1]} channels but the ControlNet {control_net.name!r} "
            f"takes {control_net.hint_channels}"
        )
    hint = image.movedim(-1, 1).float()
    applied: dict[int, AppliedControl] = {}  # one new control per previous control, shared by all
    out = []
    for conds in entries.values():
        converted = []
        for tensor, options in conds:
            previous = options.get("control")
            if id(previous) not in applied:
                applied[id(previous)] = AppliedControl(
                    control_net, hint, float(strength), float(start_percent), float(end_percent), previous
                )
            converted.append(
                [tensor, {**options, "control": applied[id(previous)], "control_apply_to_uncond": apply_to_uncond}]
            )
        out.append(converted)
    return out


class ControlNetApplyAdvanced:
    """Guide sampling with a ControlNet and a hint image, on both conditionings, for a part of the
    schedule (start / end percent) with a strength; previous ControlNets on the entries still apply."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "control_net": ("CONTROL_NET",),
                "image": ("IMAGE",),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            },
            "optional": {"vae": ("VAE",)},
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(
        self, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None
    ) -> tuple[list, list]:
        """(positive, negative) with the ControlNet attached to every entry of both."""
        conds = {"positive": positive, "negative": negative}
        out = attach_control(
            "ControlNetApplyAdvanced", conds, control_net, image, strength, start_percent, end_percent, False
        )
        return (out[0], out[1])


class ControlNetApply:
    """ComfyUI's older one-conditioning ControlNet node (deprecated there, still in shared
    workflows): the ControlNet on every entry of `conditioning` for the whole schedule; at sampling
    time a negative without ControlNets runs it too (ComfyUI's `control_apply_to_uncond`)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "control_net": ("CONTROL_NET",),
                "image": ("IMAGE",),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    DEPRECATED = True
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, conditioning, control_net, image, strength) -> tuple[list]:
        """(conditioning,) with the ControlNet attached to every entry."""
        conds = {"conditioning": conditioning}
        (out,) = attach_control("ControlNetApply", conds, control_net, image, strength, 0.0, 1.0, True)
        return (out,)
