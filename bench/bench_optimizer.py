"""Benchmark: one optimizer step of the demo world's UNet on CPU, as `mvtrain fit` takes it (gradient clipping,
then AdamW), under torch's default (a Python loop over the tensors on CPU), the foreach kernels (what
`mvtrain fit` uses on CPU) and the fused kernel (docs/benchmarks.md "The known-answer fixture's time").

Each variant starts from the same weights and gradients and takes the same steps; the largest difference of its
weights from the default's is printed beside its time (0 means the same numbers to the bit).

    .venv/bin/python bench/bench_optimizer.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mvforge.models.model import multiview_from_sd
from mvforge.models.tiny import _tiny_parts

VARIANTS = {"default (loop)": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def run(params: list[torch.Tensor], grads: list[torch.Tensor], steps: int, **kind) -> tuple[float, list]:
    """Median seconds of clip + AdamW step over ``steps`` steps (3 warm-up steps first), and the final weights."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(ps, lr=3e-3, weight_decay=0.01, **kind)
    foreach = True if kind else None
    times = []
    for i in range(steps + 3):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=foreach)
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times), ps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet = multiview_from_sd(_tiny_parts(0, "v_prediction", "world", 1)["unet"])
    params = list(unet.parameters())
    torch.manual_seed(0)
    grads = [torch.randn_like(p) * 1e-2 for p in params]
    n = sum(p.numel() for p in params)
    print(f"world UNet (one head): {len(params)} tensors, {n:,} parameters; {args.threads} threads")
    base_s, base = None, None
    for name, kind in VARIANTS.items():
        s, ps = run(params, grads, args.steps, **kind)
        if base is None:
            base_s, base = s, ps
        diff = max((a - b).abs().max().item() for a, b in zip(ps, base, strict=True))
        print(f"{name:15s} {s * 1e3:6.2f} ms/step   {base_s / s:4.2f}x   max |w - default's w| {diff:.1e}")


if __name__ == "__main__":
    main()
