"""The training loop of `mvtrain fit` (design §2.5, §9: one loop you can read top to bottom).

Model code knows nothing about Ray: ``fit`` takes a ``Runtime`` saying which rank it is, on which device, how to
wrap the model for data parallelism (DDP under Ray Train) and how to report. ``--workers 0`` runs it in-process.

Exact resume: every random draw of step ``s`` (caption dropout, timesteps, noise, the VAE's latent sample) comes
from a generator seeded with (seed, s, rank), the loader restores its own position, and a checkpoint holds the
weights, EMA weights, optimizer and LR-scheduler states. So a run killed after a checkpoint and resumed gives the
same loss sequence as an uninterrupted one (tested on CPU).

Checkpoint layout (diffusers format, design §2.5): ``checkpoints/step-000100/`` with ``unet/``, ``unet_ema/``,
``optimizer.pt``, ``lr_scheduler.pt``, ``loader-rank<r>.json``, ``config.toml``, ``state.json`` (step). It is
filled as ``step-000100.tmp`` and renamed into place last, so a checkpoint directory is complete or absent.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mvforge import config as config_mod
from mvforge.errors import UserError
from mvforge.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, versions
from mvforge.models.model import encode_text, load_frozen, load_unet
from mvforge.models.resolve import CKPT_PREFIX, checkpoints, latest_checkpoint
from mvforge.train.config import FitConfig

METRICS_FIELDS = ("step", "epoch", "kind", "loss", "lr", "grad_norm", "step_s")


@dataclass
class Runtime:
    """Where and how this copy of the loop runs; the in-process default is rank 0 of 1."""

    rank: int = 0
    """This copy's global rank (seeds its per-step randomness and picks its loader split)."""
    world_size: int = 1
    """Number of copies training together."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Device of the models and batches."""
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    """DDP wrapping (Ray Train's prepare_model); identity in-process."""
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint: None
    """Called after each logged step with metrics and, at checkpoints, the checkpoint directory."""
    show_progress: bool = True
    """Progress bar and summary table on rank 0 (off under Ray Train: workers' stdout is interleaved)."""

    def barrier(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but no CUDA GPU is visible; use --set device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


# ---------------------------------------------------------------- checkpoints
def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(out: Path, step: int, rt: Runtime, unet, ema, optimizer, lr_sched, loader, cfg) -> Path:
    """Every rank writes its loader state into the shared ``.tmp`` directory; rank 0 writes the rest and
    renames it into place (the rename is the commit)."""
    final = Path(out) / "checkpoints" / f"{CKPT_PREFIX}{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if rt.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    rt.barrier()
    atomic_write_json(tmp / f"loader-rank{rt.rank}.json", loader.state_dict())
    if rt.rank == 0:
        unet.save_pretrained(tmp / "unet")
        if ema is not None:
            ema.save_pretrained(tmp / "unet_ema")
        atomic_write_bytes(tmp / "optimizer.pt", _torch_bytes(optimizer.state_dict()))
        atomic_write_bytes(tmp / "lr_scheduler.pt", _torch_bytes(lr_sched.state_dict()))
        atomic_write_text(tmp / "config.toml", config_mod.to_toml(cfg))
        atomic_write_json(tmp / "state.json", {"step": step, "versions": versions("torch", "diffusers")})
    rt.barrier()
    if rt.rank == 0:
        os.replace(tmp, final)
        for old in checkpoints(out)[: -max(1, cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    rt.barrier()
    return final


# ---------------------------------------------------------------- pieces of a step
def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """All randomness of one step on one rank: a function of (seed, step, rank) only (exact resume)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + rank)


def lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def training_target(noise_sched, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or v = sqrt(a_t) * noise - sqrt(1 - a_t) * latents
    (v-prediction, Salimans & Ho 2022; SD 2.1 at 768 px uses it), per the scheduler's prediction_type."""
    if noise_sched.config.prediction_type == "epsilon":
        return noise
    return noise_sched.get_velocity(latents, noise, t)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows past the checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    rows = [r for r in csv.DictReader(path.read_text().splitlines()) if int(r["step"]) <= step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------- the loop
def fit(cfg: FitConfig, rt: Runtime | None = None) -> list[dict]:
    """Train until ``cfg.max_steps``, resuming from the run's latest checkpoint; returns this call's
    per-step records (step, kind, loss, ...)."""
    from mvforge.shards.loader import MultiViewLoader

    rt = rt or Runtime(device=resolve_device(cfg.device))
    if not cfg.pretrained:
        raise UserError("no pretrained model; pass --pretrained DIR (a diffusers Stable Diffusion directory)")
    if not cfg.shards:
        raise UserError("no training shards; pass --shards DIR (written by `mvdata shard`)")
    # Checkpoints record where the frozen parts come from; absolute, so `mvtrain sample` works from any cwd.
    cfg = config_mod.replace(cfg, pretrained=str(Path(cfg.pretrained).resolve()))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = rt.device

    # 1. Models: frozen VAE + text encoder; the UNet from the last checkpoint, else from SD + camera MLP.
    vae, text_encoder, tokenizer, noise_sched = load_frozen(cfg.pretrained)
    vae.to(dev)
    text_encoder.to(dev)
    resume = latest_checkpoint(out)
    unet = load_unet(resume if resume else cfg.pretrained).to(dev).train()
    if cfg.gradient_checkpointing:  # num_views travels with each call, so recomputation sees it (issue 9)
        unet.enable_gradient_checkpointing()
    ema = None
    if cfg.ema_decay > 0:
        has_ema = resume is not None and (resume / "unet_ema").is_dir()
        ema = (load_unet(resume, "unet_ema") if has_ema else copy.deepcopy(unet)).to(dev).eval()
        ema.requires_grad_(False)
    latent_scale = vae.config.scaling_factor
    prediction_type = noise_sched.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(
            f"scheduler prediction_type {prediction_type!r}: train supports epsilon or v_prediction"
        )
    num_train_t = noise_sched.config.num_train_timesteps

    # 2. Optimizer and LR schedule (states restored on resume).
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps
    )
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps))
    step = 0
    if resume is not None:
        optimizer.load_state_dict(torch.load(resume / "optimizer.pt", map_location=dev, weights_only=True))
        lr_sched.load_state_dict(torch.load(resume / "lr_scheduler.pt", weights_only=True))
        step = int(json.loads((resume / "state.json").read_text())["step"])
    model = rt.wrap_model(unet)

    # 3. Data: the streaming loader, at its saved position on resume.
    loader = MultiViewLoader(
        cfg.shards, cfg.loader, shards_2d=cfg.shards_2d, rank=rt.rank, world_size=rt.world_size
    )
    if resume is not None:
        loader_file = resume / f"loader-rank{rt.rank}.json"
        if not loader_file.exists():
            raise UserError(
                f"{resume} has no loader state for rank {rt.rank}; resume with the same --workers"
            )
        loader.load_state_dict(json.loads(loader_file.read_text()))
    metrics_path = out / "metrics.csv"
    if rt.rank == 0:
        _truncate_metrics(metrics_path, step)
        atomic_write_text(out / "config.toml", config_mod.to_toml(cfg))

    # 4. Train.
    records: list[dict] = []
    start_step, t_start = step, time.monotonic()
    progress = None
    if rt.show_progress and rt.rank == 0:
        from mvforge.progress import StageProgress

        progress = StageProgress("mvtrain fit", max(0, cfg.max_steps - step), unit="steps").__enter__()
    try:
        while step < cfg.max_steps:
            for batch in loader:
                t0 = time.monotonic()
                g = step_generator(cfg.seed, step, rt.rank)
                images = batch["images"]  # (B, V, 3, H, W) in [-1, 1]; V = 1 for 2D
                b, v = images.shape[:2]
                cameras = batch["cameras"]  # (B, V, 16) or None (2D: no camera term, model.py)

                # 4a. Captions, with dropout to the empty prompt per object (for CFG at sampling).
                drop = torch.rand(b, generator=g) < cfg.caption_dropout
                captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist(), strict=True)]
                with torch.no_grad():
                    text = encode_text(tokenizer, text_encoder, captions, dev).repeat_interleave(v, dim=0)
                    # 4b. Latents of the frozen VAE, scaled to unit variance (SD's scaling_factor).
                    dist = vae.encode(images.reshape(b * v, *images.shape[2:]).to(dev)).latent_dist
                    latents = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g).to(dev)) * (
                        latent_scale
                    )

                # 4c. One timestep per object, shared by its views (they are denoised together, paper §3.1).
                t = torch.randint(0, num_train_t, (b,), generator=g).repeat_interleave(v).to(dev)
                noise = torch.randn(latents.shape, generator=g).to(dev)
                noisy = noise_sched.add_noise(latents, noise, t)
                target = training_target(noise_sched, latents, noise, t)
                cams = None if cameras is None else cameras.reshape(b * v, -1).to(dev)

                # 4d. Forward, MSE loss, backward, clip, step, EMA.
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                    pred = model(noisy, t, text, cameras=cams, num_views=v)
                loss = F.mse_loss(pred.float(), target.float())
                if not torch.isfinite(loss):
                    raise RuntimeError(f"loss is {loss.item()} at step {step}; lower optim.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), o.grad_clip_norm).item()
                    if o.grad_clip_norm > 0
                    else float("nan")
                )
                lr = lr_sched.get_last_lr()[0]
                optimizer.step()
                lr_sched.step()
                if ema is not None:
                    ema_update(ema, unet, cfg.ema_decay)
                step += 1

                # 4e. Metrics, checkpoints.
                rec = {
                    "step": step,
                    "epoch": batch["epoch"],
                    "kind": batch["kind"],
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "step_s": time.monotonic() - t0,
                }
                records.append(rec)
                if rt.rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
                    _append_metrics(metrics_path, rec)
                ckpt = None
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                    ckpt = save_checkpoint(out, step, rt, unet, ema, optimizer, lr_sched, loader, cfg)
                if step % cfg.log_every == 0 or ckpt is not None:
                    rt.report(rec, ckpt)
                if progress is not None:
                    progress.advance()
                if step >= cfg.max_steps:
                    break
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)
    if rt.rank == 0 and rt.show_progress:
        from mvforge.progress import print_summary

        done = step - start_step
        losses = [r["loss"] for r in records]
        print_summary(
            "mvtrain fit",
            [
                ("steps this run", done),
                ("resumed from step", start_step),
                (
                    "3d / 2d steps",
                    f"{sum(r['kind'] == '3d' for r in records)} / {sum(r['kind'] == '2d' for r in records)}",
                ),
                ("last loss", f"{losses[-1]:.4f}" if losses else "-"),
                ("mean loss", f"{sum(losses) / len(losses):.4f}" if losses else "-"),
                ("s / step", f"{(time.monotonic() - t_start) / max(done, 1):.3f}"),
                ("checkpoint", latest_checkpoint(out) or "-"),
            ],
        )
    return records
