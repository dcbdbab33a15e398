"""`mvtrain fit-vae`: fit a model directory's autoencoder to the rendered views of a shard set.

A model trained from scratch (the demo world, docs/demo.md) needs an autoencoder that reconstructs its images
before the UNet can learn anything in latent space: a random ``AutoencoderKL`` maps every image to noise-like
latents and decodes them to noise. Stable Diffusion's real VAE (SD 2.1 base) already reconstructs natural
images, so real runs never need this step.

The objective is the KL-regularised autoencoder of Rombach et al. (LDM §3): pixel MSE + a small KL weight,
without the adversarial and perceptual terms (they matter at 256² and above; at 32-64 px the MSE autoencoder
already reaches the world's detail). Afterwards ``scaling_factor`` is set so the latents of the world have unit
standard deviation, the rule LDM used to pick SD's 0.18215 (LDM §4.3.2, "rescale the latent space").

Output: a copy of the model directory whose ``vae/`` holds the fitted autoencoder, plus ``vae_fit.json`` (the
settings, the final reconstruction PSNR, the scaling factor), written into a temporary sibling and renamed into
place: the directory is complete or absent, and a rerun with a finished ``--out`` does nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.devices import cpu_foreach
from mvforge.errors import UserError
from mvforge.fsutil import atomic_write_json, tmp_path
from mvforge.progress import StageProgress, print_summary
from mvforge.shards.config import LoaderConfig
from mvforge.shards.loader import MultiViewLoader

VAE_SHARD_CACHE_MB = 1000.0
"""Shards the VAE fit keeps in memory after their first read (``LoaderConfig.cache_mb``): the demo world's are
about 0.5 MB each."""

DONE_FILE = "vae_fit.json"
"""Written last into the output directory: its presence means the fit finished."""


@dataclass(frozen=True)
class VAEFitConfig:
    """Fitting an ``AutoencoderKL`` to rendered views (module docstring)."""

    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 8
    """Objects per batch; each contributes ``num_views`` views, so a batch holds ``batch_size x 4`` images."""
    resolution: int = 32
    """Image side in pixels (the resolution the UNet will be trained at)."""
    lr: float = 2e-3
    """Adam learning rate (cosine-decayed to 0 over ``steps``)."""
    kl_weight: float = 1e-6
    """Weight of the KL term against the per-pixel MSE (LDM's KL-f8 used 1e-6)."""
    seed: int = 0
    """Seeds the parameter noise, the views and the backgrounds."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "resolution"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.resolution % 8:
            raise UserError(f"resolution must be a multiple of 8 (got {self.resolution}); pass e.g. 32")
        if not self.lr > 0 or self.kl_weight < 0:
            raise UserError("lr must be > 0 and kl_weight >= 0")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def _images(batch: dict) -> torch.Tensor:
    """(B*V, 3, H, W) in [-1, 1] from a loader batch."""
    x = batch["images"]
    return x.reshape(-1, *x.shape[2:])


def fit_vae(
    model: str | Path,
    shards: str | Path,
    out: str | Path,
    cfg: VAEFitConfig,
    show_progress: bool = True,
    device: str = "auto",
) -> dict:
    """Fit ``model``'s ``vae/`` to the views in ``shards`` and write the model with it to ``out`` (under the
    output lock of docs/reliability.md; ``vae_fit.json`` written last marks it finished).

    Returns the summary written to ``out/vae_fit.json`` (``psnr_db``: reconstruction PSNR over the last
    batches, ``scaling_factor``). Raises UserError for a model without ``vae/``, empty shards, or an ``out``
    that holds something else. ``device``: auto | cpu | cuda (execution only: the result does not record it).
    """
    from mvforge.devices import resolve_device
    from mvforge.models.resolve import local_model_dir

    model, out = local_model_dir(model), Path(out)  # a directory or a Hub id (docs/ecosystem.md)
    if not (model / "vae" / "config.json").is_file():
        raise UserError(f"{model} has no vae/; pass a diffusers Stable Diffusion directory as --model")
    with rundir.exclusive(out, "mvtrain fit-vae"):
        return _fit_vae_locked(model, Path(shards), out, cfg, show_progress, resolve_device(device))


def _fit_vae_locked(
    model: Path, shards: Path, out: Path, cfg: VAEFitConfig, show_progress: bool, device
) -> dict:
    """``fit_vae`` under its output lock: returns ``out``'s summary as is when it already holds this fit, else
    fits, writes the model with the fitted ``vae/`` and the summary (``vae_fit.json``, last) and returns it."""
    from diffusers import AutoencoderKL

    wanted = {
        "model": str(model.resolve()),
        "shards": str(shards.resolve()),
        "config": config_mod.to_dict(cfg),
    }
    done = _existing_fit(out, wanted, show_progress)
    if done is not None:
        return done

    # 1. Fit the VAE's reconstruction on the shards' views.
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").to(device)
    vae.train()
    loader = _loader(shards, cfg)
    start = time.monotonic()
    recent = _train(vae, loader, cfg, device, show_progress)

    # 2. LDM §4.3.2: scale latents to unit variance so the diffusion noise schedule fits them.
    scaling = _scaling_factor(vae, loader, device)
    vae.register_to_config(scaling_factor=scaling)

    # 3. The model with the fitted vae/, then the marker.
    _write_model(model, out, vae)
    summary = wanted | {
        "psnr_db": round(sum(recent) / len(recent), 2),
        "scaling_factor": round(scaling, 5),
        "seconds": round(time.monotonic() - start, 1),
    }
    atomic_write_json(out / DONE_FILE, summary)
    if show_progress:
        print_summary("mvtrain fit-vae", [(k, v) for k, v in summary.items() if k != "config"])
    return summary


def _existing_fit(out: Path, wanted: dict, show_progress: bool) -> dict | None:
    """The summary of the finished fit in ``out`` (kept, as its summary table says), None when there is none to
    keep. Raises UserError when ``out`` holds a fit with settings other than ``wanted``, or something that is
    not a fit-vae output."""
    if (out / DONE_FILE).is_file():
        done = json.loads((out / DONE_FILE).read_text())
        diff = rundir.settings_difference({k: done.get(k) for k in wanted}, wanted)
        if diff:
            raise UserError(
                f"{out} holds a VAE fitted with other settings ({diff}); pass another --out or remove it"
            )
        if show_progress:
            print_summary(f"mvtrain fit-vae: {out} is already fitted (kept)", [("psnr_db", done["psnr_db"])])
        return done
    leftovers = [p.name for p in out.iterdir() if p.name != rundir.LOCK]
    if leftovers and not (out / "model_index.json").is_file():
        raise UserError(f"{out} exists and is not a fit-vae output; pass a new --out or remove it")
    return None


def _loader(shards: Path, cfg: VAEFitConfig) -> MultiViewLoader:
    """The shards' views one at a time (``view_mode`` random), ``cfg.steps`` batches per epoch."""
    return MultiViewLoader(
        str(shards),
        LoaderConfig(
            batch_size=cfg.batch_size,
            resolution=cfg.resolution,
            view_mode="random",
            caption_suffix="",
            seed=cfg.seed,
            batches_per_epoch=cfg.steps,
            # The VAE is fitted to a world that fits in memory (module docstring): its shards are read once.
            # A larger dataset streams what does not fit; the views are the same either way.
            cache_mb=VAE_SHARD_CACHE_MB,
        ),
    )


def _train(vae, loader: MultiViewLoader, cfg: VAEFitConfig, device, show_progress: bool) -> list[float]:
    """``cfg.steps`` Adam steps (cosine LR) of MSE reconstruction + ``kl_weight`` x KL per pixel value; returns
    the reconstruction PSNR in dB of each of the last 20 batches."""
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr, foreach=cpu_foreach(device))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    recent = []
    with StageProgress("fit-vae", cfg.steps, unit="steps", enabled=show_progress) as progress:
        for step, batch in enumerate(loader):
            x = _images(batch).to(device)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = torch.mean((recon - x) ** 2) + cfg.kl_weight * posterior.kl().mean() / x[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step >= cfg.steps - 20:  # the last batches measure the result the UNet will see
                recent.append(psnr(recon.detach(), x))
            progress.advance()
            if step + 1 >= cfg.steps:
                break
    return recent


@torch.no_grad()
def _scaling_factor(vae, loader: MultiViewLoader, device) -> float:
    """1 / std of the latents (posterior modes) of 4 loader batches (``vae`` left in eval mode)."""
    vae.eval()
    latents = torch.cat(
        [vae.encode(_images(b).to(device)).latent_dist.mode() for _, b in zip(range(4), loader, strict=False)]
    )
    return float(1.0 / latents.std())


def _write_model(model: Path, out: Path, vae) -> None:
    """Copy ``model``'s other parts into ``out``, then put the fitted ``vae/`` in place (renamed in whole)."""
    # The model's other parts, then the fitted vae/, then the marker: an interrupted run left no marker and
    # is redone from the start (a minute or two), so nothing half-written is ever taken for a result.
    shutil.copytree(
        model, out, ignore=shutil.ignore_patterns("vae", DONE_FILE, rundir.LOCK), dirs_exist_ok=True
    )
    tmp = tmp_path(out / "vae")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    shutil.rmtree(out / "vae", ignore_errors=True)
    tmp.rename(out / "vae")
