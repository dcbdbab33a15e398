"""Benchmark: seconds per SDS iteration at the 64² and 256² phases and peak memory (issue 14, design §8).

One iteration = what `mvtrain sds` does per step: occupancy update, camera draw, volume render of the views
(hash-grid field at the official size unless overridden), resize to the model's resolution, VAE encode with
gradients, one CFG UNet call on both halves, x0 loss, orientation loss, backward, AdamW step. Each phase runs
``--warmup`` untimed then ``--iters`` timed iterations; the median is reported and 10K steps are extrapolated
as 5K at 64² (batch 8) + 5K at 256² (batch 4), the official schedule.

    .venv/bin/python bench/bench_sds.py                                 # CPU, tiny guidance model
    .venv/bin/python bench/bench_sds.py --device cuda --model /weights/mvdream-sd21-4view --samples 256
    .venv/bin/python bench/bench_sds.py --device cuda --sd21-random --samples 256   # SD 2.1-size random weights

``--shading`` lambertian (default, the post-warm-up phase with analytic normals) and/or albedo (the warm-up);
several values are timed in the same run, one after the other. ``--levels``/``--log2-hashmap`` shrink the hash
grid (default: the official 16 levels, 2^19), ``--ray-chunk`` and ``--no-checkpoint`` are the renderer's memory
knobs. Peak memory on CPU is the process's peak RSS (VmHWM) during the phase: it is reset before each phase
through /proc/self/clear_refs (Linux), so a later phase does not inherit an earlier one's peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sd_arch import SD21, build

from mvforge.sds.anneal import timestep_range
from mvforge.sds.cameras import sample_cameras
from mvforge.sds.config import SDSConfig
from mvforge.sds.guidance import MultiViewSDS
from mvforge.sds.loop import build_state
from mvforge.sds.material import ALBEDO, Shading


def sd21_random_pipeline(out: Path) -> Path:
    """An SD 2.1-base-size multi-view pipeline with random weights (the timing does not depend on them)."""
    from diffusers import DDIMScheduler

    from mvforge.models.model import multiview_from_sd
    from mvforge.models.pipeline import MVDreamPipeline

    unet, vae, text, tok, _ = build(SD21, 256)
    sched = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    MVDreamPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=multiview_from_sd(unet), scheduler=sched
    ).save_pretrained(out)
    return out


def run_phase(
    cfg: SDSConfig, model, device, resolution: int, groups: int, shading: Shading, warmup: int, iters: int
):
    import gc

    gc.collect()
    _reset_peak_rss()
    state = build_state(cfg, device)
    sds = MultiViewSDS(model, cfg.guidance, num_views=cfg.camera.n_view)
    text = sds.encode_text("a DSLR photo of a corgi")
    times, cpu = (
        [],
        [],
    )  # wall and CPU seconds (all threads; on a shared machine the CPU time is the steadier)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        state.renderer.update_occupancy(step * cfg.renderer.occupancy_update_every)
        cams = sample_cameras(np.random.default_rng(step), cfg.camera, groups).to(device)
        out = state.renderer.render(
            cams, resolution, shading, generator=torch.Generator().manual_seed(step), with_orient=True
        )
        t, noise = sds.draw(
            out.rgb.shape[0], timestep_range(4000, model.num_train_timesteps), torch.Generator()
        )
        loss = sds(out.rgb, cams.embedding, text, t, noise).loss
        if out.orient is not None:
            loss = loss + 100.0 * out.orient.sum() / (out.opacity > 0).sum().clamp_min(1)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = _peak_rss_kib() / 2**20
    return statistics.median(times), statistics.median(cpu), peak, state.field.backend


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: clear_refs 5); a no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_kib() -> int:
    """Peak RSS since the last reset (VmHWM), else the process's lifetime high-water mark."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="pipeline or `mvtrain fit` dir (default: a tiny random one)")
    ap.add_argument("--sd21-random", action="store_true", help="SD 2.1-size random multi-view pipeline")
    ap.add_argument("--samples", type=int, default=32, help="renderer.samples_per_ray")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--shading", nargs="+", default=["lambertian"], choices=["lambertian", "albedo"])
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "tcnn"])
    ap.add_argument("--levels", type=int, default=16, help="field.n_levels (official 16)")
    ap.add_argument("--log2-hashmap", type=int, default=19, help="field.log2_hashmap_size (official 19)")
    ap.add_argument("--ray-chunk", type=int, help="renderer.ray_chunk (default: the config's)")
    ap.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="renderer.checkpoint_chunks=false (every chunk's graph kept)",
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from mvforge.models import MultiViewDiffusion
    from mvforge.models.tiny import make_tiny_mv_pipeline

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp())
    path = args.model or (
        sd21_random_pipeline(tmp / "sd21") if args.sd21_random else make_tiny_mv_pipeline(tmp / "tiny")
    )
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = MultiViewDiffusion.from_pretrained(path, device=device, dtype=dtype)
    base = SDSConfig(deterministic=False)
    cfg = dataclasses.replace(
        base,
        renderer=dataclasses.replace(
            base.renderer,
            samples_per_ray=args.samples,
            ray_chunk=args.ray_chunk or base.renderer.ray_chunk,
            checkpoint_chunks=not args.no_checkpoint,
        ),
        field=dataclasses.replace(
            base.field, backend=args.backend, n_levels=args.levels, log2_hashmap_size=args.log2_hashmap
        ),
    )
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = {}
    for name in args.shading:
        shading = ALBEDO if name == "albedo" else Shading("lambertian", 0.5, 0.5)
        row = rows[name] = {}
        for res in args.resolutions:
            groups = cfg.camera.groups_low_res if res <= 64 else cfg.camera.groups_high_res
            s, cpu, peak, backend = run_phase(
                cfg, model, device, res, groups, shading, args.warmup, args.iters
            )
            row[res] = {
                "s_per_iter": round(s, 3),
                "cpu_s_per_iter": round(cpu, 3),
                "peak_gib": round(peak, 2),
                "views": groups * 4,
            }
            print(
                f"{name} {res}² x {groups * 4} views: {s:.3f} s/iter ({cpu:.1f} CPU-s), peak {peak:.2f} GiB "
                f"({backend} hash grid)",
                flush=True,
            )
        if 64 in row and 256 in row:
            total = 5000 * row[64]["s_per_iter"] + 5000 * row[256]["s_per_iter"]
            print(f"{name}: 10K steps (5K at 64², 5K at 256²): {total / 60:.1f} min")
            row["10k_min"] = round(total / 60, 1)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "model": "sd21-random" if args.sd21_random else (args.model or "tiny"),
        "samples_per_ray": args.samples,
        "grid": f"{args.levels} levels, 2^{args.log2_hashmap}",
        "ray_chunk": cfg.renderer.ray_chunk,
        "checkpoint_chunks": not args.no_checkpoint,
        "load_average_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
        "results": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
