"""The k-diffusion view of a discrete-time model: its table of training sigmas.

sigma_t = sqrt((1 - alphabar_t) / alphabar_t) for each training timestep t. A sigma maps to the
NEAREST table entry in log space (that timestep is what the UNet sees); a fractional timestep maps
to a sigma by interpolating log-sigma between its two neighbours. These are the semantics of
ComfyUI's ModelSamplingDiscrete; `DistilledSigmas` is the LCM table of ComfyUI's
ModelSamplingDiscreteDistilled (50 of the 1000 timesteps, `skip_steps` apart, ending at 999).

Moved here from hosts/standalone/noise_schedule.py; one change: `DistilledSigmas.timestep`
now returns the training timestep (as ComfyUI's class does), so that `timestep` and `sigma` are
inverse to each other on both tables and the `normal` / `sgm_uniform` schedulers work on the LCM
table too.
"""

from __future__ import annotations

import torch

from ..lcm_scheduler.schedule import make_betas as schedule_betas

ZSNR_LAST_ALPHABAR = 4.8973451890853435e-08


def make_betas(schedule: dict) -> torch.Tensor:
    """Training betas (float64, as ComfyUI builds its table) from a diffusers-style schedule dict:
    `lcm_scheduler.make_betas` ("scaled_linear", SD's, linear in sqrt(beta); or "linear")."""
    return schedule_betas(
        schedule.get("beta_schedule", "scaled_linear"),
        schedule["beta_start"],
        schedule["beta_end"],
        schedule["num_train_timesteps"],
        dtype=torch.float64,
    )


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphabar) so the last timestep has (almost) zero SNR while the first
    keeps its value (Lin et al. 2023, "Common diffusion noise schedules are flawed"); the last
    alphabar is pinned to a tiny positive value so its sigma stays finite."""
    root = (1.0 / (sigmas**2 + 1.0)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alphabar = root**2
    alphabar[-1] = ZSNR_LAST_ALPHABAR
    return ((1 - alphabar) / alphabar) ** 0.5


class DiscreteSigmas:
    """Sigma <-> timestep for a discrete schedule (ComfyUI's ModelSamplingDiscrete).

    `sigmas` / `log_sigmas` are float32 tables, ascending (index 0 = the least noisy timestep).
    """

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

    def index(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest table index to `sigma` (in log space), on `sigma`'s device."""
        distances = sigma.float().log().reshape(1, -1) - self.log_sigmas.to(sigma.device)[:, None]
        return distances.abs().argmin(dim=0).reshape(sigma.shape)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model timestep for `sigma`: the nearest table entry's training timestep."""
        return self.index(sigma)

    def sigma_at_index(self, index: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) table index, log-linearly interpolated, clamped."""
        t = torch.clamp(torch.as_tensor(index, dtype=torch.float32), 0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) model timestep: the inverse of `timestep`."""
        return self.sigma_at_index(timestep)

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep given to the UNet for `sigma` (same as `timestep`)."""
        return self.timestep(sigma)


class DistilledSigmas(DiscreteSigmas):
    """LCM's table: `original_timesteps` of the training timesteps, `skip_steps` apart and ending
    at the last one (ComfyUI's ModelSamplingDiscreteDistilled). Timesteps are training timesteps
    (skip_steps - 1, 2 * skip_steps - 1, ..., 999); indices run over the 50 entries."""

    original_timesteps = 50

    def __init__(self, schedule: dict, zsnr: bool = False):
        super().__init__(schedule, zsnr)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        full = self.sigmas
        picked = [full[self.num_timesteps - 1 - k * self.skip_steps] for k in range(self.original_timesteps)]
        self.sigmas = torch.stack(picked[::-1])
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.index(sigma) * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        index = (torch.as_tensor(timestep, dtype=torch.float32) - (self.skip_steps - 1)) / self.skip_steps
        return self.sigma_at_index(index)
