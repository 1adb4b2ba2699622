"""Where the standalone host's models run, and in which precision (ComfyUI's `--cpu`, `--force-fp16` ...).

`DeviceSettings` is what a user asks for (`python -m lcm_accel run --device cuda --dtype fp16
--vae-dtype bf16`); `resolve` turns it into a `Placement` (a torch device and one dtype per part),
refusing what this machine cannot do (CUDA without a CUDA device, bf16 on a GPU without it). The
checkpoint loader places the UNet, text encoders and VAE as the run's placement says
(`device_default` sets it for a block; without one everything stays on the CPU in float32).

Defaults, as ComfyUI chooses them:
- device "auto": the first CUDA device when there is one, else the CPU;
- on the CPU every part in float32;
- on CUDA the UNet and text encoders in float16, the VAE in bfloat16 where the GPU has it (compute
  capability 8.0 and later) else float32: SD VAEs overflow in float16 (black or NaN images), bf16
  keeps fp32's exponent range (ComfyUI's SD VAE works in [bf16, fp32] for the same reason).

Values between nodes stay where ComfyUI keeps them: LATENT, IMAGE and CONDITIONING on the CPU in
float32; each model call moves its inputs to its model's device and dtype and returns float32 on the
CPU. Noise is drawn from CPU generators and then moved, so a seed gives the same image on every device.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N"


class DeviceError(ValueError):
    """A device or dtype this machine cannot provide, or a setting that names none."""


@dataclass(frozen=True)
class DeviceSettings:
    """A run's device / dtype request; None dtypes take the device's defaults (module docstring).

    `dtype` sets the UNet and, unless `text_encoder_dtype` is given, the text encoders."""

    device: str = "auto"
    dtype: str | None = None
    text_encoder_dtype: str | None = None
    vae_dtype: str | None = None

    def __post_init__(self):
        _parse_device(self.device)
        for field_name in ("dtype", "text_encoder_dtype", "vae_dtype"):
            value = getattr(self, field_name)
            if value is not None and value not in DTYPES:
                raise DeviceError(f"{field_name} must be one of {', '.join(DTYPES)}, got {value!r}")


@dataclass(frozen=True)
class Placement:
    """Where the models of a run live: one device, one dtype per part."""

    device: torch.device
    unet_dtype: torch.dtype = torch.float32
    text_encoder_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32

    def key(self) -> tuple[str, str, str, str]:
        """What the checkpoint cache tells placements apart by."""
        return (str(self.device), str(self.unet_dtype), str(self.text_encoder_dtype), str(self.vae_dtype))


CPU_FP32 = Placement(torch.device("cpu"))


def _parse_device(name: str) -> torch.device | None:
    """torch.device for "cpu" / "cuda" / "cuda:N" (None for "auto"); anything else is refused."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"device must be {DEVICE_HELP}, got {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be {DEVICE_HELP}, got {name!r} (the standalone host runs on CPU or CUDA)")
    return device


def _check_cuda(device: torch.device, asked: str) -> torch.device:
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {asked}: CUDA is not available here (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'}); run with --device cpu or --device auto, "
            "or install a CUDA build of torch on a machine with an NVIDIA GPU"
        )
    index = 0 if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"--device {asked}: there is no CUDA device {index} (this machine has {count}: cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (CPU: yes; CUDA: compute capability 8.0+)."""
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve(settings: DeviceSettings) -> Placement:
    """The Placement `settings` ask for on this machine; DeviceError names what cannot be had."""
    asked = _parse_device(settings.device)
    if asked is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    elif asked.type == "cuda":
        device = _check_cuda(asked, settings.device)
    else:
        device = asked
    on_cuda = device.type == "cuda"
    unet = DTYPES[settings.dtype] if settings.dtype else (torch.float16 if on_cuda else torch.float32)
    text = DTYPES[settings.text_encoder_dtype] if settings.text_encoder_dtype else unet
    if settings.vae_dtype:
        vae = DTYPES[settings.vae_dtype]
    else:
        vae = torch.bfloat16 if on_cuda and bf16_supported(device) else torch.float32
    for what, dtype in (("dtype", unet), ("text encoder dtype", text), ("VAE dtype", vae)):
        if dtype == torch.bfloat16 and not bf16_supported(device):
            raise DeviceError(
                f"{what} bf16: {torch.cuda.get_device_name(device)} has no native bfloat16 "
                "(compute capability below 8.0); use fp16 or fp32"
            )
    return Placement(device, unet, text, vae)


_DEFAULT: contextvars.ContextVar[Placement | None] = contextvars.ContextVar("lcm_accel_placement", default=None)


@contextmanager
def device_default(settings: DeviceSettings | Placement | None) -> Iterator[Placement]:
    """Within the block, checkpoints load where `settings` say (the `run --device/--dtype` flags).
    Resolved on entry, so a device this machine lacks fails before any work is done."""
    placement = settings if isinstance(settings, Placement) or settings is None else resolve(settings)
    token = _DEFAULT.set(placement)
    try:
        yield current_placement()
    finally:
        _DEFAULT.reset(token)


def current_placement() -> Placement:
    """The placement in force: the innermost `device_default`, else the CPU in float32."""
    placement = _DEFAULT.get()
    return CPU_FP32 if placement is None else placement
