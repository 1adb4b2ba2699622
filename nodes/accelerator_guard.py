"""The accelerator guard and records shared by the LoRA nodes: which family a LoRA file is, the
mixer's record of the accelerator in its mix, and the guard's one-line warnings. The family table
(`lcm_scheduler.families`) is imported when a node runs: importing the nodes loads no torch."""

from __future__ import annotations

import logging

from ..hosts.accelerator_record import accelerator_record, with_accelerator_record

LOGGER = logging.getLogger("lcm_accel.accelerator")


def warn(messages: list[str]) -> None:
    """The guard's voice: each message one warning line in the log (ComfyUI's console / the harness)."""
    for message in messages:
        LOGGER.warning(message)


def detect_lora_family(host, lora_name: str):
    """`lcm_scheduler.detect_family` on a file of the loras folder (its safetensors metadata, then its
    name): a `Detection` or None."""
    from ..lcm_scheduler.families import detect_family

    metadata: dict = {}
    if lora_name.lower().endswith(".safetensors"):
        from ..lora_merge.safetensors_io import read_safetensors_header

        metadata = read_safetensors_header(host.lora_path(lora_name))[1]
    return detect_family(lora_name, metadata)


def record_mix_families(host, model_in, model_out, lora_names: list[str]):
    """The mixer's part: the accelerator LoRAs among `lora_names` (by metadata or name) are recorded on
    the mixed MODEL, after the input MODEL's own; more than one gives the guard's warning."""
    from ..lcm_scheduler.families import mix_warning

    previous = accelerator_record(model_in)
    found = [(name, detection) for name in lora_names if (detection := detect_lora_family(host, name))]
    families = ([previous["family"]] if previous else []) + [detection.family for _, detection in found]
    message = mix_warning(families)
    if message:
        warn([f"LCMAccel_AdapterMixer: {message}"])
    if previous or not found:
        return model_out
    name, detection = found[0]
    return with_accelerator_record(model_out, detection.family, name, detection.lora_steps, detection.reason)
