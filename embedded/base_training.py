"""Training the embedded base model: the VAE (reconstruction + a small KL term), then the UNet
(epsilon prediction on SD1.5's noise schedule, min-SNR loss weighting, 10 % empty prompts for
classifier-free guidance, an EMA of its weights is what ships).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from ..lcm_scheduler.schedule import make_alphas_cumprod
from ..runtime.model_types import SD_NOISE_SCHEDULE

SD15_LATENT_STD = 1 / 0.18215  # the latent std the SD1.5 scaling factor expects


def progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(range(total), desc=desc, disable=not progress, dynamic_ncols=True)


def _foreground(x: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs from the image's corner (the background colour), else 0: the
    shape covers a tenth of the picture but carries all of its meaning."""
    corner = x[..., :1, :1]
    return ((x - corner).abs().sum(dim=1, keepdim=True) > 0.15).float()


def train_vae(
    vae: torch.nn.Module,
    images: torch.Tensor,
    steps: int,
    batch: int = 8,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    crop: int = 32,
    shape_weight: float = 4.0,
    seed: int = 0,
    progress: bool = True,
) -> torch.nn.Module:
    """Fit the AutoencoderKL to `images` ((N, 3, 64, 64) in [0, 1]); L1 + L2 reconstruction (the
    shape's pixels weighted `1 + shape_weight`) plus KL,
    on random `crop`-pixel crops aligned to the latent grid (a quarter of the cost; the VAE is
    convolutional, as SD's was trained on crops smaller than its images)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    vae.train()
    bar = progress_bar(steps, "vae", progress)
    for _ in bar:
        x = images[torch.randint(len(images), (batch,), generator=generator)] * 2 - 1
        if crop < x.shape[-1]:
            top, left = (torch.randint((x.shape[-1] - crop) // 8 + 1, (2,), generator=generator) * 8).tolist()
            x = x[..., top : top + crop, left : left + crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        weight = 1.0 + shape_weight * _foreground(x)
        error = (recon - x).abs() + (recon - x).pow(2)
        loss = (error * weight).mean() / weight.mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return vae.eval().requires_grad_(False)


def finetune_decoder(
    vae: torch.nn.Module,
    images: torch.Tensor,
    steps: int,
    batch: int = 8,
    lr: float = 1e-3,
    shape_weight: float = 4.0,
    seed: int = 0,
    progress: bool = True,
) -> torch.nn.Module:
    """Fine-tune the decoder (post_quant_conv + decoder) on whole pictures, the encoder frozen: the
    latent space, and so every model trained on it, stays as it is (what SD's fine-tuned VAE
    decoders did). Sharper pictures without the crop-edge artefacts of the crop training."""
    generator = torch.Generator().manual_seed(seed)
    vae.requires_grad_(False)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    vae.train()
    bar = progress_bar(steps, "vae decoder", progress)
    for _ in bar:
        x = images[torch.randint(len(images), (batch,), generator=generator)] * 2 - 1
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        weight = 1.0 + shape_weight * _foreground(x)
        loss = (((recon - x).abs() + (recon - x).pow(2)) * weight).mean() / weight.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def normalise_latents(vae: torch.nn.Module, images: torch.Tensor) -> None:
    """Shift and scale the VAE's latent space (quant_conv / post_quant_conv, an exact
    reparametrisation) so latents have zero mean and the std SD1.5's scaling factor assumes."""
    means = torch.cat([vae.encode(images[i : i + 64] * 2 - 1).latent_dist.mean for i in range(0, len(images), 64)])
    mean = means.mean(dim=(0, 2, 3))
    scale = SD15_LATENT_STD / means.std(dim=(0, 2, 3))
    quant, post = vae.quant_conv, vae.post_quant_conv
    channels = mean.numel()
    quant.weight[:channels] *= scale.view(-1, 1, 1, 1)
    quant.bias[:channels] = (quant.bias[:channels] - mean) * scale
    quant.bias[channels:] += 2 * torch.log(scale)  # log-variance follows the scale
    post.bias += (post.weight * mean.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    post.weight /= scale.view(1, -1, 1, 1)


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the posterior of each image, in scaled-latent units."""
    means, stds = [], []
    for i in range(0, len(images), 64):
        dist = vae.encode(images[i : i + 64] * 2 - 1).latent_dist
        means.append(dist.mean * scaling)
        stds.append(dist.std * scaling)
    return torch.cat(means), torch.cat(stds)


def alphas_cumprod() -> torch.Tensor:
    """SD1.5's 1000-step scaled-linear schedule (what the checkpoint loader assumes)."""
    keys = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
    return make_alphas_cumprod(**{k: SD_NOISE_SCHEDULE[k] for k in keys})


def diffusion_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    context: torch.Tensor,
    acp: torch.Tensor,
    generator: torch.Generator,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The epsilon-prediction loss at uniformly drawn timesteps; `snr_gamma`: min-SNR weighting
    (Hang et al. 2023: weight min(SNR, gamma) / SNR, so the nearly clean timesteps, where the
    picture's content is already decided, do not dominate the gradient)."""
    t = torch.randint(len(acp), (latents.shape[0],), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    a = acp[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    error = (unet(noisy, t, encoder_hidden_states=context).sample - noise).pow(2).mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return error.mean()
    snr = acp[t] / (1 - acp[t])
    return (error * snr.clamp(max=snr_gamma) / snr).mean()


def train_unet(
    unet: torch.nn.Module,
    means: torch.Tensor,
    stds: torch.Tensor,
    contexts: torch.Tensor,
    empty: torch.Tensor,
    steps: int,
    batch: int = 32,
    lr: float = 1e-3,
    drop: float = 0.1,
    ema_rate: float = 0.999,
    snr_gamma: float | None = 5.0,
    seed: int = 0,
    progress: bool = True,
) -> torch.nn.Module:
    """Train the UNet on (posterior mean, std) latents with per-image text contexts ((N, 77, C));
    `empty` is the empty prompt's context (used for a `drop` fraction: classifier-free guidance).
    One-cycle learning rate (5 % warm-up, cosine decay), min-SNR-`snr_gamma` loss weighting.
    Returns the EMA copy."""
    generator = torch.Generator().manual_seed(seed)
    acp = alphas_cumprod()
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    unet.train()
    bar = progress_bar(steps, "unet", progress)
    for step in bar:
        index = torch.randint(len(means), (batch,), generator=generator)
        latents = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        keep = (torch.rand(batch, generator=generator) >= drop).view(-1, 1, 1)
        context = torch.where(keep, contexts[index], empty.expand_as(contexts[index]))
        loss = diffusion_loss(unet, latents, context, acp, generator, snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        rate = min(ema_rate, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - rate)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return ema.eval()


def text_contexts(encode: Callable[[str], torch.Tensor], prompts: list[str]) -> torch.Tensor:
    """(N, 77, C) contexts of `prompts`, each distinct prompt encoded once."""
    cache: dict[str, torch.Tensor] = {}
    for prompt in set(prompts):
        cache[prompt] = encode(prompt)
    return torch.cat([cache[p] for p in prompts])
