"""Benchmark: the multi-view pipeline against diffusers' plain StableDiffusionPipeline, per image (design §8:
<= 1.15x; docs/bench/sample.md).

Both sides share the VAE, text encoder, tokenizer and UNet weights, the scheduler (DDIM), steps, CFG scale,
resolution and device. The multi-view side is ``MVDreamPipeline`` (camera MLP, 3D self-attention over the V
views of an object, V images per call); the plain side is ``StableDiffusionPipeline`` with the identical
``UNet2DConditionModel`` (no camera, per-image attention) making V images per call
(``num_images_per_prompt=V``). A third side runs the multi-view pipeline with V = 1 (V prompts, per-image
attention): the pipeline's own overhead without the 3D attention. Calls are interleaved so load from other processes hits all alike; the
median and the best call per side are reported, divided by the V images of a call (on a shared machine the
best call is the least disturbed one).

The model is SD-shaped (VAE downsampling x8, cross-attention at SD's three upper levels, two resnets per level),
with small widths so it runs on a CPU; ``--arch sd21`` builds SD 2.1 base's sizes (random weights: the timing
does not depend on them) and reports seconds per 4-view object and peak GPU memory too.

    .venv/bin/python bench/bench_sample.py [--steps 10] [--repeats 5] [--resolution 256]
    .venv/bin/python bench/bench_sample.py --arch sd21 --device cuda --dtype fp16 --steps 50     # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import StableDiffusionPipeline
from sd_arch import ARCH, build

from mvforge.models.model import multiview_from_sd
from mvforge.models.pipeline import MultiViewDiffusion, make_scheduler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=list(ARCH), default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    dev = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    unet, vae, text, tok, sched = build(ARCH[args.arch], args.resolution)
    mv = MultiViewDiffusion(multiview_from_sd(unet), vae, text, tok, sched).to(dev, dtype)
    unet.to(dev, dtype).eval().requires_grad_(False)
    mv_pipe = mv.pipeline("ddim")
    sd_pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=make_scheduler("ddim", sched.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for p in (mv_pipe, sd_pipe):
        p.set_progress_bar_config(disable=True)
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, device {dev}, {args.dtype}, threads "
        f"{torch.get_num_threads()}; {args.arch} UNet {n_unet:.1f} M params, {args.resolution}² "
        f"(latents {args.resolution // 8}²), DDIM {args.steps} steps, CFG 10, {args.views} views/images per call"
    )
    prompt = "a red ceramic coffee mug, 3d asset"
    kw = dict(num_inference_steps=args.steps, guidance_scale=10.0, output_type="pil")

    def run_mv():
        return mv_pipe(prompt, num_views=args.views, resolution=args.resolution, **kw)

    def run_mv1():  # the same pipeline with per-image attention: its overhead without the 3D attention
        return mv_pipe([prompt] * args.views, num_views=1, resolution=args.resolution, **kw)

    def run_sd():
        return sd_pipe(
            prompt, num_images_per_prompt=args.views, height=args.resolution, width=args.resolution, **kw
        )

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    print(f"  warm-up: {timed(run_mv):.2f} s, {timed(run_sd):.2f} s", flush=True)  # allocator, kernels
    times = {"multiview": [], "mv, V=1": [], "plain SD": []}
    peak = {}
    for _ in range(args.repeats):
        for name, fn in (("multiview", run_mv), ("mv, V=1", run_mv1), ("plain SD", run_sd)):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(timed(fn))
            print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
            if dev.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated() / 2**30
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    for name, ts in times.items():
        mem = f", peak {peak[name]:.2f} GiB" if name in peak else ""
        print(
            f"{name:>10}: {med[name] / args.views:.3f} s/image, {med[name]:.2f} s per {args.views}-view object "
            f"(median of {len(ts)}: {', '.join(f'{t:.2f}' for t in ts)}){mem}"
        )
    print(
        f"ratio multiview / plain SD per image: median {med['multiview'] / med['plain SD']:.3f}x, "
        f"best {best['multiview'] / best['plain SD']:.3f}x (target <= 1.15x); the pipeline without 3D attention "
        f"(V=1): median {med['mv, V=1'] / med['plain SD']:.3f}x, best {best['mv, V=1'] / best['plain SD']:.3f}x"
    )


if __name__ == "__main__":
    main()
