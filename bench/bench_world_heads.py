"""Benchmark: the demo world's UNet training step against its attention head count (docs/benchmarks.md).

diffusers' ``UNet2DConditionModel`` reads ``attention_head_dim`` as the number of heads. The world UNet's
32-channel levels hold the 4-view self-attention over 4 x 16² = 1,024 tokens; this times forward + backward of
the multi-view UNet (camera MLP included; no optimizer step) on one batch of the demo's shape (4 objects x 4
views, 16² latents) for each head count, and the default head count (8) again under the math SDPA kernel and
under bf16 autocast.
The sides are interleaved so load from other processes hits them alike; the median per side is reported.

    .venv/bin/python bench/bench_world_heads.py [--steps 10] [--threads 2] [--heads 8 4 2 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from mvforge.models.model import multiview_from_sd
from mvforge.models.tiny import ATTENTION_HEADS, _tiny_parts


def world_unet(heads: int) -> torch.nn.Module:
    """`mvtrain make-tiny-sd --variant world --attention-heads HEADS`'s UNet, made multi-view, random weights."""
    return multiview_from_sd(_tiny_parts(0, "v_prediction", "world", heads)["unet"]).train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heads", type=int, nargs="+", default=[8, 4, 2, 1], help="divisors of 32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(16, 4, 16, 16, generator=g)
    text = torch.randn(16, 77, 32, generator=g)
    cameras = torch.randn(16, 16, generator=g)
    timesteps = torch.randint(0, 1000, (16,), generator=g)

    def variants():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for h in args.heads:
            yield f"{h} head{'s' * (h > 1)}", world_unet(h), contextlib.nullcontext
        d = ATTENTION_HEADS
        yield f"{d} heads, math SDPA", world_unet(d), lambda: sdpa_kernel(SDPBackend.MATH)
        yield f"{d} heads, bf16 autocast", world_unet(d), lambda: torch.autocast("cpu", dtype=torch.bfloat16)

    sides = list(variants())

    def step(unet, ctx) -> float:
        t0 = time.perf_counter()
        with ctx():
            out = unet(
                latents, timesteps, text, cameras, 4
            )  # the call MultiViewDiffusion.predict_noise makes
            out.float().pow(2).mean().backward()
        unet.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name, _, _ in sides}
    for _name, unet, ctx in sides:  # warm-up
        step(unet, ctx)
    for _ in range(args.steps):
        for name, unet, ctx in sides:
            times[name].append(step(unet, ctx))
    base = statistics.median(times[sides[0][0]])
    print(
        f"| world UNet, 4 objects x 4 views, 16² latents, {args.threads} threads | fwd+bwd (median s) | vs first |"
    )
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
