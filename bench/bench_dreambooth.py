"""MVDreamBooth benchmark (docs/dreambooth.md, design §8: step ≤ 1.05x a plain fit step) and the λ measurement.

1. Step time: the same 2D step (photo batch, loss, backward, AdamW) with and without the analytic
   preservation gradient (``add_preservation_grad``), alternated on one model and batch; the ratio of medians, and the
   term alone (its share of the plain step; per parameter, to scale to SD 2.1's N_θ).
2. What λ does at the preset's optimizer settings (configs/dreambooth-mvdream.toml: lr 2e-6, wd 0.01, batch 4,
   clip 1, constant LR) on the tiny model: max|θ − θ0| and the last loss after ``--steps`` steps for
   λ = 0, 1 and 1e8.

Usage: python bench/bench_dreambooth.py [--steps 30] [--resolution 64] [--reps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw


def photos(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        im = Image.new("RGB", (80, 64), (128, 128, 128))
        ImageDraw.Draw(im).ellipse([10 + 4 * i, 8, 60, 56], fill=(200, 30 * i, 40))
        im.save(d / f"p{i}.png")
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from mvforge import config as config_mod
    from mvforge.models.tiny import make_tiny_mv_pipeline
    from mvforge.train.dreambooth import (
        add_preservation_grad,
        dreambooth,
        load_dreambooth_models,
        load_photos,
        photo_batch,
    )
    from mvforge.train.dreambooth_config import DreamBoothConfig
    from mvforge.train.loop import (
        Runtime,
        make_optimizer,
        micro_batch_inputs,
        micro_batch_loss,
        optimizer_step,
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-db-"))
    mv = make_tiny_mv_pipeline(tmp / "mv")
    imgs = photos(tmp / "photos")
    preset = config_mod.load(
        DreamBoothConfig, Path(__file__).parents[1] / "configs" / "dreambooth-mvdream.toml"
    )
    cfg = config_mod.replace(
        preset,
        pretrained=str(mv),
        images=str(imgs),
        prompt="a photo of xjq toy",
        resolution=args.resolution,
        mixed_precision="no",
        device=args.device,
        save_pipeline=False,
        log_every=1,
        checkpoint_every=10**6,
    )
    cfg = config_mod.set_field(cfg, "validation.every", 0)
    dev = torch.device(args.device)

    # 1. Step time with and without the preservation gradient.
    m, params, theta0 = load_dreambooth_models(cfg, Runtime(device=dev), None)
    optimizer, lr_sched = make_optimizer(m.unet, cfg, dev)
    x, _ = load_photos(imgs, args.resolution)
    batch = photo_batch(x, cfg.prompt, torch.arange(cfg.batch_size) % len(x))
    coeff = cfg.preservation_lambda / sum(p.numel() for p in params)
    times = {"plain": [], "dreambooth": []}

    def step(with_term: bool, i: int) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        inputs = micro_batch_inputs(m, batch, torch.Generator().manual_seed(i), cfg)
        micro_batch_loss(m, inputs, cfg).backward()
        if with_term:
            add_preservation_grad(params, theta0, coeff)
        optimizer_step(m, optimizer, lr_sched, None, cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step(False, 0)  # warm-up
    for i in range(args.reps):
        times["plain"].append(step(False, i))
        times["dreambooth"].append(step(True, i))
    # The term alone (memory-bound, ~5 passes over N_θ floats): robust to the step's noise on a shared machine.
    term = []
    for _ in range(args.reps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        add_preservation_grad(params, theta0, coeff)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        term.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    n_theta = sum(p.numel() for p in params)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, device {dev}")
    print(f"tiny model, N_θ = {n_theta:,}, batch {cfg.batch_size} at {args.resolution} px, {args.reps} reps")
    print(
        f"step: plain {med['plain'] * 1e3:.1f} ms, dreambooth {med['dreambooth'] * 1e3:.1f} ms (median), "
        f"ratio {med['dreambooth'] / med['plain']:.3f}; best-call ratio {best['dreambooth'] / best['plain']:.3f}"
    )
    t_term = statistics.median(term)
    print(
        f"preservation gradient alone: {t_term * 1e3:.2f} ms median = {t_term / med['plain']:.1%} of the plain "
        f"step; {t_term / n_theta * 1e9:.2f} ns per parameter"
    )

    # 2. What λ does at the preset's settings.
    for lam in (0.0, 1.0, 1e8) if args.steps else ():  # --steps 0: the step-time part only
        c = config_mod.replace(
            cfg, out=str(tmp / f"run-{lam:g}"), max_steps=args.steps, preservation_lambda=lam
        )
        recs = dreambooth(c, Runtime(device=dev, show_progress=False))
        print(
            f"λ = {lam:g}: after {args.steps} steps max|θ − θ0| = {recs[-1]['max_abs_dev']:.3e}, "
            f"mean|θ − θ0| = {recs[-1]['mean_abs_dev']:.3e}, "
            f"last loss {recs[-1]['loss']:.6f}"
        )


if __name__ == "__main__":
    main()
