"""Where samplers get their fresh noise: seeded Gaussian draws and a Brownian tree.

A sampler is handed a `NoiseSource` (built by the host from the seed alone) and asks it for the
kind of noise it needs, given its own x and sigmas:

* `source.gaussian(x)`: independent N(0, I) draws, one per call, from a CPU generator seeded with
  the seed (ancestral samplers, DDPM, LCM). It is ComfyUI's default noise sampler except that
  ComfyUI draws on x's device; drawing on the CPU gives a seed the same image on every device.
* `source.brownian(x, sigmas)`: increments of ONE Brownian path W over [min positive sigma,
  max sigma], normalised: noise(s, s') = (W(s') - W(s)) / sqrt(|s' - s|). Noise over nested or
  adjacent intervals is correlated as Brownian motion is, so an SDE solver sees the same path
  whatever its steps. Built on `torchsde.BrownianTree` with the seed as entropy and the tree on the
  CPU, exactly as ComfyUI's SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) build theirs, so
  a seed gives ComfyUI's image. torchsde is an optional dependency (`pip install torchsde`,
  the `sde` extra); ComfyUI installs it.

Both return a noise function `noise(sigma, sigma_next) -> Tensor` shaped like x; the Gaussian one
ignores its arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seeded_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseFn:
    """Fresh normal noise like x from a CPU generator seeded with `seed` (a random seed when None),
    moved to x's device. Each call is the next draw; any arguments are ignored."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()

    def draw(*_unused) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, generator=generator).to(x.device)

    return draw


def _import_torchsde():
    try:
        import torchsde
    except ImportError as error:
        raise ImportError(
            "the SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) draw Brownian-tree noise with the "
            "`torchsde` package, which is not installed: run `pip install torchsde` "
            "(or install this pack with its `sde` extra)"
        ) from error
    return torchsde


class BrownianTreeNoise:
    """Normalised increments of one seeded Brownian path on [sigma_min, sigma_max].

    noise(s, s') = sign * (W(max) - W(min)) / sqrt(|s' - s|) with min/max the sorted pair and
    sign = +1 when s < s' else -1: a standard normal for each interval, consistent across
    intervals. `seed` is the torchsde entropy; a list of seeds (one per batch item) gives each
    item its own tree. The tree lives on the CPU in float32 time.
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int | Sequence[int] | None = None):
        torchsde = _import_torchsde()
        lo = torch.as_tensor(sigma_min).detach().cpu().float()
        hi = torch.as_tensor(sigma_max).detach().cpu().float()
        self.sign = 1.0
        if hi < lo:
            lo, hi, self.sign = hi, lo, -1.0
        self.device, self.dtype = x.device, x.dtype
        w0 = torch.zeros(x.shape, dtype=x.dtype)
        if seed is None:
            seeds, self.per_item = [int(torch.randint(0, 2**63 - 1, ()).item())], False
        elif isinstance(seed, (list, tuple)):
            if len(seed) != x.shape[0]:
                raise ValueError(f"{len(seed)} seeds given for a batch of {x.shape[0]}: give one per batch item")
            seeds, self.per_item, w0 = list(seed), True, w0[0]
        else:
            seeds, self.per_item = [seed], False
        self.trees = [torchsde.BrownianTree(lo, w0, hi, entropy=s) for s in seeds]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = self.sign
        if b < a:
            a, b, sign = b, a, -sign
        lo, hi = a.detach().cpu().float(), b.detach().cpu().float()
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends and warns when a query at sigma_max lands a hair past
            # its rounded end (it clamps the query, as for ComfyUI): not the user's concern
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            increments = torch.stack([tree(lo, hi) for tree in self.trees])
        increments = increments if self.per_item else increments[0]
        scale = (b - a).abs().sqrt().cpu()
        return (increments * sign / scale).to(device=self.device, dtype=self.dtype)


class NoiseSource:
    """The fresh noise a sampler may draw, defined by a seed; build one per sampling run.

    `NoiseSource(seed)` is what the host passes as a sampler's `noise` argument. Samplers that
    need noise ask for it with the run's x (and sigmas, for the Brownian range):
    `gaussian(x)` for ancestral / DDPM / LCM noise, `brownian(x, sigmas)` for the SDE samplers.
    Each call starts afresh from the seed (as each ComfyUI sampler call does). `seed` None draws
    unseeded noise.
    """

    def __init__(self, seed: int | Sequence[int] | None = None):
        self.seed = seed

    def gaussian(self, x: torch.Tensor) -> NoiseFn:
        seed = self.seed[0] if isinstance(self.seed, (list, tuple)) else self.seed
        return seeded_noise_sampler(x, seed)

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor) -> NoiseFn:
        positive = sigmas[sigmas > 0]
        return BrownianTreeNoise(x, positive.min(), sigmas.max(), self.seed)

    def __repr__(self) -> str:
        return f"NoiseSource(seed={self.seed!r})"


def gaussian_noise(noise, x: torch.Tensor, sampler: str) -> NoiseFn:
    """The Gaussian noise function for a sampler's `noise` argument (a NoiseSource or a noise fn)."""
    if isinstance(noise, NoiseSource):
        return noise.gaussian(x)
    if callable(noise):
        return noise
    raise ValueError(f"sampler {sampler!r} draws fresh noise: pass noise=NoiseSource(seed) (or a noise function)")


def brownian_noise(noise, x: torch.Tensor, sigmas: torch.Tensor, sampler: str) -> NoiseFn:
    """The Brownian noise function for an SDE sampler's `noise` argument."""
    if isinstance(noise, NoiseSource):
        return noise.brownian(x, sigmas)
    if callable(noise):
        return noise
    raise ValueError(f"sampler {sampler!r} draws Brownian noise: pass noise=NoiseSource(seed) (or a noise function)")
