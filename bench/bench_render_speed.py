"""Render speed at equal noise: mvforge's Blender child vs objaverse-xl's script, judged by PSNR per second
(docs/bench/render_speed.md).

Run (the peer script is never vendored; pass your checkout's copy):

    .venv/bin/python bench/bench_render_speed.py --peer-script ~/objaverse-xl/scripts/rendering/blender_script.py

Measured side by side in one run, on the same objects, 8 views at 256², same bounce limits, same threads:
1. each mvforge variant (Cycles samples, world importance-map resolution, OpenImageDenoise; ``lamps-*``: the
   sun-lamp rig of ``lighting.kind = "lamps"`` instead of an HDRI) for each framing (``fit``, ``mvdream``): one
   Blender child per object through ``mvforge.render.runner.run_object``, or with ``--batch`` all objects in
   one child through ``runner.run_objects`` as ``mvdata render`` batches them (``limits.objects_per_process``);
   the process model of ``mvdata render`` without Ray (Ray's start is paid once per run, not per object);
2. the peer, one fresh process per object through ``bench/run_peer_script.py`` (its own cameras: radius
   U[1.5, 2.2], 49° fov; its own 4 sun lights);
3. noise: PSNR against a 1,024-sample, non-adaptive, non-denoised render of the same view (same cameras,
   lights and seed), on the first ``--psnr-views`` views of the first ``--psnr-objects`` objects; each side
   against its own reference (mvforge's per kind of light). PSNR over the whole image and over the object's pixels only (alpha of either
   image > 0), on RGB composited over grey 0.5; SSIM (scikit-image) on the object's bounding box, where
   denoising could smear textures. References are cached under ``bench/out/render_speed/ref``;
4. object coverage: fraction of pixels with alpha > 0.5, mean over all views;
5. exposure: per object, the share of its pixels (alpha > 128) with a channel at 254-255 (clipped) and their
   mean value; the ``-norm<target>`` variants normalise each HDRI to that mean radiance (``lighting.exposure``),
   each with its own references. ``--psnr-objects 0`` skips references and PSNR (clipping only).

Prints a table and writes ``bench/out/render_speed/results.json``. Figures go to docs/benchmarks.md by hand,
with the machine, date and the load average printed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvforge.cameras import OrbitSampling  # noqa: E402
from mvforge.config import to_dict  # noqa: E402
from mvforge.formats import renders as layout  # noqa: E402
from mvforge.render.config import CyclesConfig, LightingConfig, LimitsConfig, RenderConfig  # noqa: E402
from mvforge.render.plan import SourceObject, hdri_pool, plan_job  # noqa: E402

GLBS = ROOT / "tests" / "data" / "glb"
OUT = ROOT / "bench" / "out" / "render_speed"
PEER_RUNNER = ROOT / "bench" / "run_peer_script.py"
# Texture-heavy objects first: the PSNR/SSIM set is the first --psnr-objects of this order.
DEFAULT_OBJECTS = ["BoxTextured", "CesiumMilkTruck", "Duck", "AlphaBlendModeTest", "monkey"]
REF_SAMPLES = 1024
# name -> CyclesConfig overrides. "auto32" is the old default (32 spp, no denoiser, AUTOMATIC map).
FAST_OIDN = {"denoise": True, "denoise_prefilter": "FAST", "denoise_quality": "BALANCED"}
VARIANTS = {
    "auto32": {"samples": 32, "world_map_resolution": 0, "denoise": False},
    "map256-32": {"samples": 32, "world_map_resolution": 256, "denoise": False},
    # OpenImageDenoise at Cycles' defaults (prefilter ACCURATE, quality HIGH): three filter runs per view.
    "map256-16-oidn": {"samples": 16, "world_map_resolution": 256, "denoise": True},
    "map256-8-oidn": {"samples": 8, "world_map_resolution": 256, "denoise": True},
    "map256-4-oidn": {"samples": 4, "world_map_resolution": 256, "denoise": True},
    # OpenImageDenoise with prefilter FAST and quality BALANCED: one filter run, ~6x cheaper at 256².
    "map256-8-fast": {"samples": 8, "world_map_resolution": 256, **FAST_OIDN},
    "map256-16-fast": {"samples": 16, "world_map_resolution": 256, **FAST_OIDN},
    "map512-8-fast": {"samples": 8, "world_map_resolution": 512, **FAST_OIDN},
    "map512-16-fast": {"samples": 16, "world_map_resolution": 512, **FAST_OIDN},
    "auto-8-fast": {"samples": 8, "world_map_resolution": 0, **FAST_OIDN},
    "auto-16-fast": {"samples": 16, "world_map_resolution": 0, **FAST_OIDN},
    # lighting.kind = "lamps": mvforge's sun-lamp rig, the peer's kind of light (no world map to build).
    "lamps-32": {"samples": 32, "denoise": False},
    "lamps-16": {"samples": 16, "denoise": False},
    "lamps-8": {"samples": 8, "denoise": False},
    "lamps-16-fast": {"samples": 16, **FAST_OIDN},
    "lamps-8-fast": {"samples": 8, **FAST_OIDN},
    "lamps-4-fast": {"samples": 4, **FAST_OIDN},
    # The peer's pixel filter (0.01 px: every sample at the pixel centre, no anti-aliasing).
    "lamps-32-f001": {"samples": 32, "denoise": False, "filter_width": 0.01},
    "lamps-24-f001": {"samples": 24, "denoise": False, "filter_width": 0.01},
    "lamps-16-f001": {"samples": 16, "denoise": False, "filter_width": 0.01},
    "lamps-8-f001": {"samples": 8, "denoise": False, "filter_width": 0.01},
}
# Every variant above as measured before cycles.adaptive_min_samples existed: Cycles' automatic minimum (64 at
# threshold 0.01), where adaptive sampling stopped no pixel at <= 80 spp.
for _over in VARIANTS.values():
    _over.setdefault("adaptive_min_samples", 0)
# Adaptive sampling that can stop a pixel after 16 samples (adaptive_min_samples 8, the default since): "-a<t>" is
# the threshold, the samples the most a pixel gets.
for _spp, _t in (
    (32, 0.01),
    (48, 0.005),
    (64, 0.01),
    (64, 0.0075),
    (64, 0.006),
    (64, 0.005),
    (96, 0.0075),
    (128, 0.01),
    (128, 0.005),
):
    VARIANTS[f"lamps-{_spp}-a{_t:g}"] = {"samples": _spp, "denoise": False, "adaptive_threshold": _t}
    VARIANTS[f"lamps-{_spp}-a{_t:g}-f001"] = VARIANTS[f"lamps-{_spp}-a{_t:g}"] | {"filter_width": 0.01}
for _spp, _t in ((32, 0.01), (48, 0.01)):
    VARIANTS[f"map512-{_spp}-a{_t:g}-fast"] = {"samples": _spp, "adaptive_threshold": _t, **FAST_OIDN}
# HDRI exposure (lighting.exposure, docs/bench/render_speed.md): the default cycles settings with each map
# normalised to a mean radiance ("-norm<target>"); LIGHTING holds a variant's LightingConfig overrides.
LIGHTING: dict[str, dict] = {}
for _target in (0.35, 0.5, 0.7):
    VARIANTS[f"map512-16-fast-norm{_target:g}"] = VARIANTS["map512-16-fast"]
    LIGHTING[f"map512-16-fast-norm{_target:g}"] = {"exposure": "normalized", "exposure_target": _target}
# Share of an object's pixels (alpha > 128) with a channel at 254-255 counts as clipped.
CLIP_LEVEL = 254


def lighting_of(variant: str) -> str:
    return "lamps" if variant.startswith("lamps") else "hdri"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def read_rgba(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0


def composite(rgba: np.ndarray) -> np.ndarray:
    """RGB over grey 0.5 (PNG alpha is straight, design §6)."""
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + 0.5 * (1.0 - a)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def noise_scores(img: Path, ref: Path) -> dict:
    """PSNR (whole image, object pixels) and SSIM (object bounding box) of ``img`` against ``ref``."""
    from skimage.metrics import structural_similarity

    x, r = read_rgba(img), read_rgba(ref)
    cx, cr = composite(x), composite(r)
    mask = (x[..., 3] > 0) | (r[..., 3] > 0)
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return {
        "psnr": psnr(cx, cr),
        "psnr_object": psnr(cx[mask], cr[mask]),
        "ssim_object": float(structural_similarity(cx[box], cr[box], channel_axis=2, data_range=1.0)),
    }


def coverage(paths: list[Path]) -> float:
    return float(np.mean([(read_rgba(p)[..., 3] > 0.5).mean() for p in paths]))


def exposure_scores(paths: list[Path]) -> dict:
    """Over the object's pixels (alpha > 128) of all ``paths``: share with any / all three RGB channels at
    ``CLIP_LEVEL`` or more, and the mean RGB value in 0-255 (HDRI exposure, docs/bench/render_speed.md)."""
    rgb = np.concatenate(
        [(x[..., :3][x[..., 3] > 128 / 255] * 255).round() for x in (read_rgba(p) for p in paths)]
    )
    clip = rgb >= CLIP_LEVEL
    return {
        "clipped": float(clip.any(axis=1).mean()),
        "clipped_all3": float(clip.all(axis=1).mean()),
        "mean_value": float(rgb.mean()),
    }


# --- mvforge -----------------------------------------------------------------------------------------------


def mvforge_cfg(
    args, framing: str, overrides: dict, lighting: str = "hdri", light_over: dict | None = None
) -> RenderConfig:
    cycles = dataclasses.replace(CyclesConfig(threads=args.threads), **overrides)
    cameras = OrbitSampling(views=args.views, framing=framing)
    return RenderConfig(
        resolution=args.resolution,
        cameras=cameras,
        cycles=cycles,
        seed=args.seed,
        lighting=LightingConfig(kind=lighting, **(light_over or {})),
    )


def run_mvforge(
    objects: list[SourceObject], cfg: RenderConfig, out: Path, *, views: int | None = None
) -> list:
    """Render each object in its own Blender child (runner.run_object); return per-object figures."""
    from mvforge.render import runner

    pool = hdri_pool(None) if cfg.lighting.kind == "hdri" else []
    rows = []
    for obj in objects:
        job = plan_job(obj, cfg, pool)
        if views is not None:
            job["views"] = job["views"][:views]
        done = layout.object_dir(out, obj.uid) / layout.META
        if views is not None and done.is_file():  # a cached reference
            rows.append({"uid": obj.uid, "cached": True})
            continue
        t = time.perf_counter()
        rec = runner.run_object(job, out, LimitsConfig(timeout_s=3600))
        wall = time.perf_counter() - t
        if rec["status"] != "ok":
            raise RuntimeError(f"{obj.uid} failed: {rec}")
        meta = json.loads(done.read_text(encoding="utf-8"))
        rows.append({"uid": obj.uid, "wall_s": wall, "views": len(job["views"]), "timings": meta["timings"]})
    return rows


def run_mvforge_batch(objects: list[SourceObject], cfg: RenderConfig, out: Path) -> list:
    """All ``objects`` in turn in ONE Blender process (runner.run_objects), as ``mvdata render`` does with
    ``limits.objects_per_process`` >= len(objects); per-object wall = its share of the call's wall, by the
    runner's per-object time (meta.json timings.object_s; the first object's includes the process start)."""
    from mvforge.render import runner

    pool = hdri_pool(None) if cfg.lighting.kind == "hdri" else []
    jobs = [plan_job(obj, cfg, pool) for obj in objects]
    t = time.perf_counter()
    recs = runner.run_objects(jobs, out, LimitsConfig(timeout_s=3600))
    wall = time.perf_counter() - t
    bad = [r for r in recs if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"failed: {bad}")
    metas = [
        json.loads((layout.object_dir(out, o.uid) / layout.META).read_text(encoding="utf-8")) for o in objects
    ]
    scale = wall / sum(m["timings"]["object_s"] for m in metas)
    return [
        {
            "uid": o.uid,
            "wall_s": m["timings"]["object_s"] * scale,
            "views": len(j["views"]),
            "timings": m["timings"],
        }
        for o, m, j in zip(objects, metas, jobs, strict=True)
    ]


# --- the peer ----------------------------------------------------------------------------------------------


def run_peer(args, objects: list[SourceObject], out: Path, *, views: int, samples: int, ref: bool) -> list:
    rows = []
    c = CyclesConfig()
    for obj in objects:
        d = out / obj.uid
        if ref and (d / f"{views - 1:03d}.png").is_file():
            rows.append({"uid": obj.uid, "cached": True})
            continue
        shutil.rmtree(d, ignore_errors=True)
        cmd = [
            sys.executable, str(PEER_RUNNER), "--peer-script", str(args.peer_script), "--object", obj.path,
            "--out", str(d), "--views", str(views), "--resolution", str(args.resolution),
            "--samples", str(samples), "--threads", str(args.threads), "--seed", str(args.seed),
            "--max-bounces", str(c.max_bounces), "--diffuse-bounces", str(c.diffuse_bounces),
            "--glossy-bounces", str(c.glossy_bounces), "--transmission-bounces", str(c.transmission_bounces),
            "--transparent-bounces", str(c.transparent_bounces),
        ]  # fmt: skip
        if ref:
            cmd.append("--no-adaptive")
        d.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        with open(d / "log.txt", "wb") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        rows.append({"uid": obj.uid, "wall_s": time.perf_counter() - t, "views": views})
    return rows


# --- scoring -----------------------------------------------------------------------------------------------


def summarize(rows: list, view_paths, ref_paths, psnr_objects: list[str], psnr_views: int) -> dict:
    wall = sum(r["wall_s"] for r in rows)
    views = sum(r["views"] for r in rows)
    all_views = [p for r in rows for p in view_paths(r["uid"], r["views"])]
    scores = [
        noise_scores(p, q)
        for uid in psnr_objects
        for p, q in zip(view_paths(uid, psnr_views), ref_paths(uid, psnr_views), strict=True)
        if q.is_file()  # no reference rendered for this framing (--ref-framings)
    ]
    out = {
        "objects": len(rows),
        "wall_s": wall,
        "views_per_s": views / wall,
        "s_per_view": wall / views,
        "objects_per_min": len(rows) / wall * 60,
        "coverage": coverage(all_views),
    }
    for key in ("psnr", "psnr_object", "ssim_object"):
        out[key] = float(np.mean([s[key] for s in scores])) if scores else float("nan")
    out["scored_views"] = len(scores)
    out["exposure"] = exposure_scores(all_views)
    out["exposure_per_object"] = {r["uid"]: exposure_scores(view_paths(r["uid"], r["views"])) for r in rows}
    cycles_s = [r["timings"]["render_s"] for r in rows if "timings" in r]
    if cycles_s:
        # Everything outside the Cycles render calls (process start, import bpy, import, setup, PNG writes).
        out["overhead"] = 1.0 - sum(cycles_s) / wall
    return out


def ref_of(variant: str) -> tuple[str, float, float | None]:
    """What decides a variant's converged image: the kind of light, the pixel filter and the HDRI exposure
    target (None = raw)."""
    light = LIGHTING.get(variant, {})
    target = light.get("exposure_target") if light.get("exposure") == "normalized" else None
    return lighting_of(variant), VARIANTS[variant].get("filter_width", CyclesConfig().filter_width), target


def ref_dir(framing: str, lighting: str, filter_width: float, target: float | None = None) -> Path:
    """Where the 1,024-sample references of one framing, kind of light, pixel filter and exposure are cached."""
    name = framing if lighting == "hdri" else f"{framing}-{lighting}"
    if filter_width != CyclesConfig().filter_width:
        name += f"-filter{filter_width:g}"
    if target is not None:
        name += f"-norm{target:g}"
    return OUT / "ref" / name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-script", type=Path, help="objaverse-xl's scripts/rendering/blender_script.py")
    p.add_argument(
        "--objects", nargs="*", default=DEFAULT_OBJECTS, help="GLB stems in tests/data/glb, or paths"
    )
    p.add_argument("--variants", nargs="*", default=list(VARIANTS)[:5], choices=list(VARIANTS))
    p.add_argument("--framings", nargs="*", default=["fit", "mvdream"], choices=["fit", "mvdream"])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--psnr-objects", type=int, default=3)
    p.add_argument("--psnr-views", type=int, default=2)
    p.add_argument("--refs-only", action="store_true", help="only render (and cache) the references")
    p.add_argument(
        "--batch",
        action="store_true",
        help="mvforge renders all objects of a variant in one Blender process (objects_per_process), as "
        "`mvdata render` does; default: one process per object, interleaved object by object",
    )
    p.add_argument(
        "--ref-framings",
        nargs="*",
        choices=["fit", "mvdream"],
        help="framings to score (default: --framings)",
    )
    args = p.parse_args()

    objects = []
    for name in args.objects:
        path = Path(name) if name.endswith(".glb") else GLBS / f"{name}.glb"
        objects.append(SourceObject(uid=path.stem, kind="local", ext="glb", path=str(path.resolve())))
    psnr_objs = objects[: args.psnr_objects]
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {load()}")  # fmt: skip

    # References first (cached): 1,024 spp, adaptive off, no denoiser, AUTOMATIC world map (the old default:
    # the map only changes the noise, never the converged image, so one reference serves every variant).
    ref_over = {
        "samples": REF_SAMPLES,
        "adaptive_threshold": 0.0,
        "denoise": False,
        "world_map_resolution": 0,
    }
    refs = sorted({ref_of(v) for v in args.variants}, key=str)
    for framing in args.framings if args.ref_framings is None else args.ref_framings:
        for kind, filter_width, target in refs:
            t = time.perf_counter()
            light = {} if target is None else {"exposure": "normalized", "exposure_target": target}
            cfg = mvforge_cfg(args, framing, ref_over | {"filter_width": filter_width}, kind, light)
            run_mvforge(psnr_objs, cfg, ref_dir(framing, kind, filter_width, target), views=args.psnr_views)
            print(
                f"reference {framing} {kind} filter {filter_width} exposure {target or 'raw'}: "
                f"{time.perf_counter() - t:.0f} s "
                f"(load {load()})",
                flush=True,
            )
    if args.peer_script:
        t = time.perf_counter()
        run_peer(args, psnr_objs, OUT / "ref" / "peer", views=args.psnr_views, samples=REF_SAMPLES, ref=True)
        print(f"reference peer: {time.perf_counter() - t:.0f} s (load {load()})", flush=True)
    if args.refs_only:
        return

    results: dict = {"machine": platform.node(), "cores": os.cpu_count(), "load_start": load(), "runs": {}}
    psnr_uids = [o.uid for o in psnr_objs]

    def mv_paths(root: Path):
        return lambda uid, n: [layout.object_dir(root, uid) / layout.view_name(i) for i in range(n)]

    def peer_paths(root: Path):
        return lambda uid, n: [root / uid / f"{i:03d}.png" for i in range(n)]

    # Object by object, every run in turn: the load of a shared machine drifts, and interleaving spreads the
    # drift over all runs instead of favouring whichever ran in a quiet minute.
    runs: dict[str, dict] = {}
    if args.peer_script:
        runs["peer"] = {"dir": OUT / "peer", "paths": peer_paths, "ref": OUT / "ref" / "peer"}
    for framing in args.framings:
        for name in args.variants:
            runs[f"mvforge {framing} {name}"] = {
                "dir": OUT / framing / name,
                "paths": mv_paths,
                "ref": ref_dir(framing, *ref_of(name)),
                "cfg": mvforge_cfg(args, framing, VARIANTS[name], lighting_of(name), LIGHTING.get(name)),
            }
    rows: dict[str, list] = {key: [] for key in runs}
    for run in runs.values():
        shutil.rmtree(run["dir"], ignore_errors=True)
    if args.batch:
        # mvforge as `mvdata render` runs it (one Blender process renders a batch of objects); the peer can only
        # run one process per object. Runs in turn, each over all objects.
        for key, run in runs.items():
            if "cfg" in run:
                rows[key] = run_mvforge_batch(objects, run["cfg"], run["dir"])
            else:
                rows[key] = run_peer(args, objects, run["dir"], views=args.views, samples=32, ref=False)
            print(f"{key} done (load {load()})", flush=True)
    else:
        for obj in objects:
            for key, run in runs.items():
                if "cfg" in run:
                    rows[key] += run_mvforge([obj], run["cfg"], run["dir"])
                else:
                    rows[key] += run_peer(args, [obj], run["dir"], views=args.views, samples=32, ref=False)
            print(f"{obj.uid} done (load {load()})", flush=True)
    for key, run in runs.items():
        res = summarize(
            rows[key], run["paths"](run["dir"]), run["paths"](run["ref"]), psnr_uids, args.psnr_views
        )
        if "cfg" in run:
            res["cycles"] = to_dict(run["cfg"].cycles)
            res["lighting"] = to_dict(run["cfg"].lighting)
        results["runs"][key] = res
    results["load_end"] = load()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"load: start {results['load_start']}, end {results['load_end']}")
    print_table(results)


def print_table(results: dict) -> None:
    peer = results["runs"].get("peer")
    print("\n| run | s/view | views/s vs peer | objects/min | coverage | PSNR dB | PSNR object dB | SSIM object "
          "| overhead |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in results["runs"].items():
        ratio = f"{r['views_per_s'] / peer['views_per_s']:.2f}x" if peer else "-"
        over = f"{r['overhead'] * 100:.1f}%" if "overhead" in r else "-"
        print(
            f"| {key} | {r['s_per_view']:.2f} | {ratio} | {r['objects_per_min']:.1f} | {r['coverage'] * 100:.1f}% "
            f"| {r['psnr']:.2f} | {r['psnr_object']:.2f} | {r['ssim_object']:.4f} | {over} |"
        )

    print("\n| run | object | clipped (any channel) | clipped (all 3) | mean value /255 |")
    print("|---|---|---|---|---|")
    for key, r in results["runs"].items():
        if "exposure" not in r:
            continue
        for uid, e in [*r["exposure_per_object"].items(), ("all", r["exposure"])]:
            print(
                f"| {key} | {uid} | {e['clipped'] * 100:.1f}% | {e['clipped_all3'] * 100:.1f}% "
                f"| {e['mean_value']:.0f} |"
            )


if __name__ == "__main__":
    main()
