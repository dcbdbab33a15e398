"""Benchmark: seconds per SDS iteration at the 64² and 256² phases and peak memory (docs/bench/sds.md, design §8).

One iteration = what `mvtrain sds` does per step: occupancy update, camera draw, volume render of the views
(hash-grid field at the official size unless overridden), resize to the model's resolution, VAE encode with
gradients, one CFG UNet call on both halves, x0 loss, orientation loss, backward, AdamW step. Each phase runs
``--warmup`` untimed then ``--iters`` timed iterations; the median is reported and 10K steps are extrapolated
as 5K at 64² (batch 8) + 5K at 256² (batch 4), the official schedule.

    .venv/bin/python bench/bench_sds.py                                 # CPU, tiny guidance model
    .venv/bin/python bench/bench_sds.py --device cuda --model /weights/mvdream-sd21-4view --samples 256
    .venv/bin/python bench/bench_sds.py --device cuda --sd21-random --samples 256   # SD 2.1-size random weights

``--shading`` lambertian (default, the post-warm-up phase with analytic normals) and/or albedo (the warm-up);
several values are timed in the same run, one after the other. ``--prune on off`` times the renderer with and
without the official per-sample pruning (design §10.5) in the same run, each phase also reporting the samples
per ray the field was evaluated at with gradients; ``--blob-density`` changes the initial blob (official 10; a
larger value is a denser, more opaque start, where the transmittance cut drops more samples).

``--floaters STEPS`` runs instead the fitted-prior experiment of tests/sds/test_fitted_prior.py (a tiny model
fitted to 4 views of a red ball, SDS from the official initial blob) for STEPS steps with pruning on and off
from the same start, and reports the PSNR against the target and the floaters: the field's opacity outside the
target's silhouette (mean over those pixels, and the share of them above 0.05), both runs' fields rendered
without pruning so the faint haze pruning skips is counted too; run it from the repository
root with ``PYTHONPATH=$PWD`` (it imports the test's fixtures).

``--levels``/``--log2-hashmap`` shrink the hash grid (default: the official 16 levels, 2^19), ``--ray-chunk`` and
``--no-checkpoint`` are the renderer's memory knobs. Peak memory on CPU is the process's peak RSS (VmHWM) during the phase: it is reset before each phase
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
    """Median wall and CPU seconds per iteration, peak memory (GiB), the hash-grid backend and the mean number of
    samples per ray the field was evaluated at with gradients."""
    import gc

    gc.collect()
    _reset_peak_rss()
    state = build_state(cfg, device)
    sds = MultiViewSDS(model, cfg.guidance, num_views=cfg.camera.n_view)
    text = sds.encode_text("a DSLR photo of a corgi")
    # wall and CPU seconds (all threads; on a shared machine the CPU time is the steadier), samples per ray
    times, cpu, samples = [], [], []
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
            samples.append(float(out.samples.mean()))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = _peak_rss_kib() / 2**20
    return (
        statistics.median(times),
        statistics.median(cpu),
        peak,
        state.field.backend,
        statistics.mean(samples),
    )


def fitted_prior_floaters(steps: int) -> dict:
    """The fitted-prior SDS of tests/sds/test_fitted_prior.py, ``steps`` steps with pruning off and on (module
    docstring): PSNR before/after, floater opacity outside the target's silhouette, samples per ray."""
    from mvforge.models.tiny import make_tiny_mv_pipeline
    from mvforge.sds.config import GuidanceConfig, OptimConfig, RendererConfig
    from mvforge.sds.renderer import VolumeRenderer
    from tests.sds import test_fitted_prior as fp  # run from the repository root with PYTHONPATH=$PWD

    torch.set_num_threads(1)  # as the test: tiny ops, a second thread only slows them down
    tmp = Path(tempfile.mkdtemp())
    tiny = make_tiny_mv_pipeline(tmp / "tiny-mv", seed=0)
    ball = VolumeRenderer(fp.RedBall(), None, RendererConfig(samples_per_ray=32, occupancy_update_every=0))
    with torch.no_grad():
        ref = ball.render(fp.CAMS, 32, ALBEDO, bg_color=fp.WHITE)
    target, outside = ref.rgb, ref.opacity[..., 0] < 0.01
    model = fp.fit_to_target(fp.calibrated_model(tiny, target), target)
    sds = MultiViewSDS(model, GuidanceConfig(guidance_scale=1.0))
    text = sds.encode_text(fp.PROMPT)
    noise = torch.randn(4, 4, sds.latent_size, sds.latent_size, generator=torch.Generator().manual_seed(7))
    rows = {}
    for prune in (False, True):
        cfg = fp.tiny_sds_config(
            "unused",
            tmp,
            renderer=RendererConfig(samples_per_ray=16, occupancy_update_every=0, prune_samples=prune),
            optim=OptimConfig(lr_grid=3e-2, lr_mlp=3e-2),
        )
        state = build_state(cfg, torch.device("cpu"))
        # floaters measured on every density the field holds: an unpruned render of the same field (the pruned
        # renderer would not show the faint haze it skips)
        unpruned = VolumeRenderer(state.field, None, dataclasses.replace(cfg.renderer, prune_samples=False))

        def evaluate(state=state, unpruned=unpruned) -> dict:
            with torch.no_grad():
                out = state.renderer.render(fp.CAMS, 32, ALBEDO, bg_color=fp.WHITE)
                every = unpruned.render(fp.CAMS, 32, ALBEDO, bg_color=fp.WHITE)
            floaters = every.opacity[..., 0][outside]
            return {
                "psnr_db": round(fp.psnr(out.rgb, target), 2),
                "floater_opacity_mean": round(float(floaters.mean()), 4),
                "floater_pixels_above_0.05": round(float((floaters > 0.05).float().mean()), 4),
            }

        before, t0, samples = evaluate(), time.perf_counter(), []
        for step in range(steps):
            out = state.renderer.render(
                fp.CAMS, 16, ALBEDO, bg_color=fp.WHITE, generator=torch.Generator().manual_seed(step)
            )
            samples.append(float(out.samples.mean()))
            g = sds(
                out.rgb,
                fp.CAMS.embedding,
                text,
                fp.T,
                noise,
                vae_generator=torch.Generator().manual_seed(step),
            )
            state.optimizer.zero_grad(set_to_none=True)
            g.loss.backward()
            state.optimizer.step()
        rows["on" if prune else "off"] = {
            "before": before,
            "after": evaluate(),
            "seconds": round(time.perf_counter() - t0, 1),
            "samples_per_ray": round(statistics.mean(samples), 2),
        }
        print(f"pruning {'on' if prune else 'off'}: {json.dumps(rows['on' if prune else 'off'])}", flush=True)
    return rows


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
    ap.add_argument(
        "--prune", nargs="+", default=["on"], choices=["on", "off"], help="renderer.prune_samples"
    )
    ap.add_argument("--blob-density", type=float, default=10.0, help="field.blob_density (official 10)")
    ap.add_argument(
        "--floaters", type=int, metavar="STEPS", help="run the fitted-prior floater comparison only"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.floaters:
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, 1 thread",
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
            "steps": args.floaters,
            "results": fitted_prior_floaters(args.floaters),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return

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
            base.field,
            backend=args.backend,
            n_levels=args.levels,
            log2_hashmap_size=args.log2_hashmap,
            blob_density=args.blob_density,
        ),
    )
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = {}
    for name, prune in [(n, p) for n in args.shading for p in args.prune]:
        shading = ALBEDO if name == "albedo" else Shading("lambertian", 0.5, 0.5)
        if args.prune != ["on"]:
            name = f"{name}, pruning {prune}"
        phase_cfg = dataclasses.replace(
            cfg, renderer=dataclasses.replace(cfg.renderer, prune_samples=prune == "on")
        )
        row = rows[name] = {}
        for res in args.resolutions:
            groups = cfg.camera.groups_low_res if res <= 64 else cfg.camera.groups_high_res
            s, cpu, peak, backend, samples = run_phase(
                phase_cfg, model, device, res, groups, shading, args.warmup, args.iters
            )
            row[res] = {
                "s_per_iter": round(s, 3),
                "cpu_s_per_iter": round(cpu, 3),
                "peak_gib": round(peak, 2),
                "views": groups * 4,
                "samples_per_ray": round(samples, 2),
            }
            print(
                f"{name} {res}² x {groups * 4} views: {s:.3f} s/iter ({cpu:.1f} CPU-s), peak {peak:.2f} GiB "
                f"({backend} hash grid), {samples:.2f} samples/ray evaluated",
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
        "blob_density": args.blob_density,
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
