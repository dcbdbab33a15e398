"""The diffusion training loss of `mvtrain fit` (and MVDreamBooth): target, noise, weighting.

Kept apart from the loop (docs/design.md §9) so every trainer computes the same loss: ε or v target per the
scheduler's ``prediction_type``, Min-SNR-γ weighting, noise offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_target(noise_sched, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or v = sqrt(a_t) * noise - sqrt(1 - a_t) * latents
    (v-prediction, Salimans & Ho 2022; SD 2.1 at 768 px uses it), per the scheduler's prediction_type."""
    if noise_sched.config.prediction_type == "epsilon":
        return noise
    return noise_sched.get_velocity(latents, noise, t)


def sample_noise(
    shape: tuple[int, ...], generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise (N, C, h, w) float32 on CPU; with ``noise_offset`` > 0 plus ``noise_offset`` x N(0, 1)
    per sample and channel (constant over h, w: lets the model shift the mean brightness, "noise offset",
    Guttenberg 2023). Draw order: the noise, then the offsets (exact resume depends on it)."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn(shape[:2] + (1,) * (len(shape) - 2), generator=generator)
    return noise


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a_t / (1 - a_t) (N,) float32 at integer timesteps ``t`` (N,)."""
    a = alphas_cumprod.to(t.device, torch.float32)[t]
    return a / (1 - a)


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str):
    """Min-SNR-γ loss weights (N,) (Hang et al. 2023, eq. 8 and its v form): min(SNR, γ) / SNR for an ε
    target, min(SNR, γ) / (SNR + 1) for a v target."""
    s = snr(alphas_cumprod, t)
    clipped = torch.clamp(s, max=gamma)
    return clipped / (s + 1) if prediction_type == "v_prediction" else clipped / s


def diffusion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    snr_gamma: float = 0.0,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Scalar float32 loss: the mean squared error of ``pred`` and ``target`` (N, C, h, w), each sample's MSE
    weighted by Min-SNR-γ when ``snr_gamma`` > 0 (then the mean of weighted per-sample MSEs)."""
    if snr_gamma <= 0:
        return F.mse_loss(pred.float(), target.float())
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=tuple(range(1, pred.ndim))
    )
    return (per_sample * min_snr_weights(alphas_cumprod, t, snr_gamma, prediction_type)).mean()
