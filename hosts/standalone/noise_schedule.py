"""The k-diffusion view of a discrete-time model (ComfyUI's ModelSamplingDiscrete) and the
schedulers that turn it into a list of sigmas.

sigma_t = sqrt((1 - alphabar_t) / alphabar_t) for the 1000 training timesteps; a sigma maps
back to the NEAREST integer timestep (that is what the UNet sees), and a fractional timestep
maps to a sigma by interpolating log-sigma. The LCM variant (distilled: 50 of the 1000
timesteps, `skip_steps` apart, ending at 999) follows ComfyUI's ModelSamplingDiscreteDistilled.
"""

from __future__ import annotations

import math

import torch

ZSNR_LAST_ALPHABAR = 4.8973451890853435e-08


def make_betas(schedule: dict) -> torch.Tensor:
    """Training betas: "scaled_linear" (SD's, called "linear" in LDM configs) or "linear"."""
    n, start, end = schedule["num_train_timesteps"], schedule["beta_start"], schedule["beta_end"]
    kind = schedule.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    raise ValueError(f"beta_schedule {kind!r} is not supported (use 'scaled_linear' or 'linear')")


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift/scale sqrt(alphabar) so the last timestep has (almost) zero SNR (Lin et al. 2023)."""
    root = (1.0 / (sigmas**2 + 1.0)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alphabar = root**2
    alphabar[-1] = ZSNR_LAST_ALPHABAR
    return ((1 - alphabar) / alphabar) ** 0.5


class DiscreteSigmas:
    """Sigma <-> timestep for a discrete schedule, as ComfyUI's ModelSamplingDiscrete."""

    def __init__(self, schedule: dict, zsnr: bool = False):
        alphas_cumprod = torch.cumprod(1.0 - make_betas(schedule), dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr(sigmas)
        self.num_timesteps = len(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest table index to `sigma` (in log space), on `sigma`'s device."""
        distances = sigma.float().log().reshape(1, -1) - self.log_sigmas.to(sigma.device)[:, None]
        return distances.abs().argmin(dim=0).reshape(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) table index, log-linearly interpolated."""
        t = torch.clamp(torch.as_tensor(timestep, dtype=torch.float32), 0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep given to the UNet for `sigma`."""
        return self.timestep(sigma)


class DistilledSigmas(DiscreteSigmas):
    """LCM's table: `original_timesteps` of the training timesteps (ModelSamplingDiscreteDistilled)."""

    original_timesteps = 50

    def __init__(self, schedule: dict, zsnr: bool = False):
        super().__init__(schedule, zsnr)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        full = self.sigmas
        picked = [full[self.num_timesteps - 1 - k * self.skip_steps] for k in range(self.original_timesteps)]
        self.sigmas = torch.stack(picked[::-1])
        self.log_sigmas = self.sigmas.log()

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.timestep(sigma) * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        index = (torch.as_tensor(timestep, dtype=torch.float32) - (self.skip_steps - 1)) / self.skip_steps
        return super().sigma(index)


# -- schedulers: sigma lists, ending with 0 --------------------------------------------------


def normal_scheduler(table: DiscreteSigmas, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from sigma_max's to sigma_min's (sgm: drop the endpoint instead)."""
    start = float(table.timestep(table.sigma_max))
    end = float(table.timestep(table.sigma_min))
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(table.sigma(torch.tensor(end))), 0.0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(table.sigma(t)) for t in timesteps]
    return torch.tensor(sigmas + ([0.0] if append_zero else []), dtype=torch.float32)


def simple_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    """Every (len/steps)-th table sigma from the top."""
    stride = len(table.sigmas) / steps
    sigmas = [float(table.sigmas[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def karras_scheduler(table: DiscreteSigmas, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, steps)
    lo, hi = float(table.sigma_min) ** (1 / rho), float(table.sigma_max) ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])]).float()


def exponential_scheduler(table: DiscreteSigmas, steps: int) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma."""
    sigmas = torch.linspace(math.log(float(table.sigma_max)), math.log(float(table.sigma_min)), steps).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])]).float()


SCHEDULERS = {
    "normal": normal_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "sgm_uniform": lambda table, steps: normal_scheduler(table, steps, sgm=True),
    "simple": simple_scheduler,
}


def calculate_sigmas(table: DiscreteSigmas, scheduler: str, steps: int) -> torch.Tensor:
    """The sigma list for `steps` steps with the named scheduler (ComfyUI's names)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r} is not available; choose from {', '.join(SCHEDULERS)}")
    return SCHEDULERS[scheduler](table, steps)


def ksampler_sigmas(table: DiscreteSigmas, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """KSampler's sigmas: `denoise` < 1 runs the last `steps` of a longer schedule (img2img)."""
    if denoise is None or denoise > 0.9999:
        return calculate_sigmas(table, scheduler, steps)
    if denoise <= 0.0:
        return torch.zeros([0])
    full = calculate_sigmas(table, scheduler, int(steps / denoise))
    return full[-(steps + 1):]
