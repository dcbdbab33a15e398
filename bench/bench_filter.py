"""Benchmark of `mvdata filter`: images/s of the whole scoring stage against the bare model forward.

Design §8 target: the stage reaches >= 85% of the bare model's images/s on the same device and batch size
(pipeline overhead <= 15%). Both sides run in this process, interleaved, best of ``--repeats``:

- bare:  the model forward the stage needs, on ready-made inputs: ``encode_image`` on (B, 3, 224, 224)
         tensors (B = --batch-size) plus ``encode_text`` on the B / views captions of those objects; the
         image-only forward is printed too;
- stage: the in-process Scorer on a synthetic render directory (256² RGBA PNGs): PNG decode, compositing on
         white, open_clip preprocess, gates, encode_image in batches of B, text encoding, cosines;
- run:   the whole `run_filter` (model load, parts, merge, selection, report) for context, and optionally the
         Ray Data engine (--ray; includes Ray and actor start-up, which dominate small runs).

The model is ViT-B-32 with random weights saved to a checkpoint file and loaded through the real-weights path
(nothing may be downloaded). Run: .venv/bin/python bench/bench_filter.py [--objects 24 --views 8 --ray]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures (the repository root; bench runs as python bench/x.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--objects", type=int, default=24)
    ap.add_argument("--views", type=int, default=8, help="views rendered = views scored per object")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward, both sides")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ray", action="store_true", help="also time the Ray Data engine (1 actor)")
    args = ap.parse_args()

    import open_clip
    import torch
    from safetensors.torch import save_file

    from mvforge.filter.clip import Scorer
    from mvforge.filter.config import ClipModelConfig, FilterConfig, RunConfig, SelectConfig, ViewsConfig
    from mvforge.filter.pipeline import run_filter
    from mvforge.formats.renders import iter_uids
    from tests.fixtures.synthetic import write_synthetic_render_dir

    tmp = Path(tempfile.mkdtemp(prefix="bench-filter-"))
    renders = tmp / "renders"
    write_synthetic_render_dir(renders, args.objects, views=args.views, resolution=args.resolution)
    uids = list(iter_uids(renders))
    n_images = args.objects * args.views

    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # open_clip warns that a random init has no weights: intended here
    model = open_clip.create_model(args.model, pretrained=None)
    logging.disable(logging.NOTSET)
    weights = tmp / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model

    per_call = max(1, args.batch_size // args.views)  # objects per Scorer call = one forward of B images
    cfg = FilterConfig(
        model=ClipModelConfig(
            name=args.model, pretrained=str(weights), device=args.device, image_batch_size=args.batch_size
        ),
        views=ViewsConfig(count=args.views),
        select=SelectConfig(keep_fraction=0.5),
        run=RunConfig(engine="local", objects_per_batch=per_call),
    )
    scorer = Scorer(str(renders), cfg, device=args.device)
    size = scorer.model.visual.image_size
    x = torch.randn(args.batch_size, 3, *size, device=scorer.device)
    tokens = scorer.tokenizer([f"a 3D model of synthetic object number {i}" for i in range(per_call)])
    tokens = tokens.to(scorer.device)
    scorer({"uid": uids[:per_call]})  # warm-up both paths (allocator, kernels)
    with torch.inference_mode():
        scorer.model.encode_image(x)

    def bare(with_text: bool) -> float:
        n_batches = -(-n_images // args.batch_size)
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(n_batches):
                scorer.model.encode_image(x)
                if with_text:
                    scorer.model.encode_text(tokens)
        if scorer.device == "cuda":
            torch.cuda.synchronize()
        return n_batches * args.batch_size / (time.perf_counter() - t)

    def stage() -> float:
        t = time.perf_counter()
        for s in range(0, len(uids), per_call):
            scorer({"uid": uids[s : s + per_call]})
        return n_images / (time.perf_counter() - t)

    bare_best, image_best, stage_best = 0.0, 0.0, 0.0
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts both sides alike
        bare_best = max(bare_best, bare(with_text=True))
        stage_best = max(stage_best, stage())
        image_best = max(image_best, bare(with_text=False))

    t = time.perf_counter()
    run_filter(renders, tmp / "out-local", cfg, progress=False)
    run_local = time.perf_counter() - t
    run_ray = None
    if args.ray:
        from dataclasses import replace

        ray_cfg = replace(
            cfg, run=RunConfig(engine="ray", workers=1, cpus_per_worker=float(torch.get_num_threads()))
        )
        t = time.perf_counter()
        run_filter(renders, tmp / "out-ray", ray_cfg, progress=False)
        run_ray = time.perf_counter() - t

    print(f"machine: {platform.platform()}, {torch.get_num_threads()} torch threads, device {scorer.device}")
    print(
        f"model {args.model} (random init), fp32, batch {args.batch_size}, {args.objects} objects x {args.views} "
        f"views at {args.resolution}px = {n_images} images"
    )
    print(f"bare image-only forward {image_best:8.1f} images/s")
    print(f"bare image+text forward {bare_best:8.1f} images/s")
    print(f"stage (in-process)      {stage_best:8.1f} images/s")
    print(f"ratio stage / (image+text forward) {stage_best / bare_best:.3f}  (design §8 target >= 0.85)")
    print(f"ratio stage / image-only forward   {stage_best / image_best:.3f}")
    print(
        f"run_filter local, wall  {run_local:8.1f} s  ({n_images / run_local:.1f} images/s incl. model load, report)"
    )
    if run_ray is not None:
        print(
            f"run_filter ray, wall    {run_ray:8.1f} s  ({n_images / run_ray:.1f} images/s incl. Ray + actor start)"
        )


if __name__ == "__main__":
    main()
