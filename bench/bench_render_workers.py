"""Where a render's time goes, and 2 workers x 1 thread against 1 worker x 2 threads on 2 cores
(docs/bench/render_speed.md).

Run: .venv/bin/python bench/bench_render_workers.py [--views 8 --repeats 2 --layouts 1x2 2x1]
     .venv/bin/python bench/bench_render_workers.py --views 32 --layouts 2x1 --objects-per-process 1 8 --copies 2
     # 1 -> N scaling on a node with N free cores (prints % of linear), and GPU seconds per view:
     .venv/bin/python bench/bench_render_workers.py --views 32 --layouts 1x1 2x1 4x1 8x1 16x1 --objects-per-process 8 --copies 8
     .venv/bin/python bench/bench_render_workers.py --views 32 --layouts 1x1 2x1 4x1 --device gpu --copies 4
     # CPU pinning beside another tenant's load (N busy processes for the whole run):
     .venv/bin/python bench/bench_render_workers.py --views 16 --layouts 2x1 --pin on off --foreign-load 1

The whole `mvdata render` driver (``mvforge.render.driver.render``) on the same GLBs and settings, each layout
(workers x threads) in turn, ``--repeats`` times, alternating so the load of a shared machine falls on both.
Ray is started once beforehand with the machine's cores, so its start-up is not counted. Per run: wall time,
objects/min, views/s; per object, from meta.json timings, the split of the Blender process's wall time into
process start + ``import bpy`` (process_s - total_s), import, setup (scene, world, Cycles), Cycles render calls
and PNG writes; the overhead fraction = 1 - render calls / process wall (design §8 target ≤ 5% at 32 views).
``--objects-per-process`` adds the batch size (``limits.objects_per_process``) as a variant, interleaved with
the layouts: in a reused process an object's process wall runs from its hand-over to its reply, so the process
start is counted once, on the batch's first object. Also per run: the overhead of the whole run, 1 - render calls
/ (workers x wall), which adds Ray, the runner's staging and finalize, and idle workers at the end of the run.
``--copies N`` renders each GLB N times under different uids (other cameras and HDRIs) for more objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvforge.cameras import OrbitSampling  # noqa: E402
from mvforge.formats import renders as layout  # noqa: E402
from mvforge.render.config import CyclesConfig, LimitsConfig, RenderConfig  # noqa: E402
from mvforge.render.plan import SourceObject  # noqa: E402

GLBS = ROOT / "tests" / "data" / "glb"
OUT = ROOT / "bench" / "out" / "render_workers"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_run(objs, cfg: RenderConfig, workers: int, out: Path, gpus_per_worker: float = 0.0) -> dict:
    """One `render` call into a fresh ``out``: wall, throughput and the summed per-object time split."""
    from mvforge.render.driver import render

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = render(objs, out, cfg, workers=workers, show_progress=False, gpus_per_worker=gpus_per_worker)
    wall = time.perf_counter() - t
    assert summary.counts.get("ok") == len(objs), summary
    split = {
        "start_and_import_bpy": 0.0,
        "import": 0.0,
        "setup": 0.0,
        "render": 0.0,
        "write": 0.0,
        "process": 0.0,
    }
    reused = 0
    # Per object, by where it was rendered: first in its process (process start + import bpy included) or in a
    # reused one; the steady-state overhead of batches of B is (fresh + (B - 1) x reused) / B per object.
    by_class = {c: {"n": 0, "process": 0.0, "render": 0.0} for c in ("fresh", "reused")}
    for obj in objs:
        meta = json.loads((layout.object_dir(out, obj.uid) / layout.META).read_text(encoding="utf-8"))
        tm = meta["timings"]
        split["start_and_import_bpy"] += tm["process_s"] - tm["total_s"]
        split["import"] += tm["import_s"]
        split["setup"] += tm["setup_s"]
        split["render"] += tm["render_s"]
        split["write"] += tm["write_s"]
        split["process"] += tm["process_s"]
        reused += bool((meta.get("process") or {}).get("reused"))
        c = by_class["reused" if (meta.get("process") or {}).get("reused") else "fresh"]
        c["n"] += 1
        c["process"] += tm["process_s"]
        c["render"] += tm["render_s"]
    return {
        "wall_s": wall,
        "objects_per_min": len(objs) / wall * 60,
        "views_per_s": summary.views / wall,
        "split_s": split,
        "overhead": 1 - split["render"] / split["process"],
        "overhead_run": 1 - split["render"] / (workers * wall),
        "reused": reused,
        "by_class": {
            k: {**c, "overhead": 1 - c["render"] / c["process"] if c["process"] else None}
            for k, c in by_class.items()
        },
        "load": load(),
    }


def gpu_count() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) or 1.0


def print_scaling(results: dict, variants: list, name: dict) -> None:
    """1 -> N workers of one thread each, per batch size and pinning: views/s of N workers / (N x views/s of 1
    worker) (design §8 target: >= 90% of linear on a machine with N free cores)."""

    def mean_vps(v) -> float:
        return sum(r["views_per_s"] for r in results[name[v]]) / len(results[name[v]])

    for k, pin in sorted({(b, p) for _, b, p in variants}):
        if ("1x1", k, pin) not in name:
            continue
        base = mean_vps(("1x1", k, pin))
        for lay, b, p in variants:
            workers, threads = (int(x) for x in lay.split("x"))
            if (b, p) != (k, pin) or threads != 1 or workers == 1:
                continue
            vps = mean_vps((lay, b, p))
            print(
                f"scaling {name[(lay, b, p)]}: {vps:.3f} views/s = {vps / base:.2f}x one worker = "
                f"{vps / base / workers * 100:.0f}% of linear"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", nargs="*", default=[g.stem for g in sorted(GLBS.glob("*.glb"))])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--samples", type=int, default=None, help="default: CyclesConfig's")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--layouts", nargs="*", default=["1x2", "2x1"], help="WORKERSxTHREADS")
    p.add_argument(
        "--objects-per-process",
        nargs="*",
        type=int,
        default=[1],
        help="batch sizes to compare (limits.objects_per_process)",
    )
    p.add_argument("--copies", type=int, default=1, help="render each GLB this many times, as other uids")
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "gpu", "auto"],
        help="Cycles device (cycles.device); with gpu the workers share the node's GPUs evenly",
    )
    p.add_argument(
        "--no-denoise",
        action="store_true",
        help="OpenImageDenoise off (splits path tracing from the denoiser)",
    )
    p.add_argument(
        "--pin",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="limits.pin_cpus settings to compare (CPU pinning)",
    )
    p.add_argument(
        "--foreign-load",
        type=int,
        default=0,
        help="run N busy single-thread processes beside the renders for the whole run: another tenant's load",
    )
    args = p.parse_args()
    if args.foreign_load < 0:
        p.error(f"--foreign-load must be 0 or more, got {args.foreign_load}")

    from mvforge.raytools import init_ray

    objs = [
        SourceObject(
            uid=name if copy == 0 else f"{name}-{copy}",
            kind="local",
            ext="glb",
            path=str((GLBS / f"{name}.glb").resolve()),
        )
        for copy in range(args.copies)
        for name in args.objects
    ]
    init_ray(num_cpus=os.cpu_count())
    # Another tenant: busy loops the kernel schedules beside the renders (they never take a CPU lock).
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.foreign_load)]
    try:
        run_all(args, objs)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run_all(args, objs: list) -> None:
    print(
        f"# {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load()}, "
        f"{args.foreign_load} foreign busy processes"
    )
    variants = [(lay, k, pin) for lay in args.layouts for k in args.objects_per_process for pin in args.pin]

    def label(v) -> str:
        out = v[0] if len(args.objects_per_process) == 1 else f"{v[0]}-b{v[1]}"
        return out + ("-unpinned" if v[2] == "off" and len(args.pin) > 1 else "")

    name = {v: label(v) for v in variants}
    results: dict[str, list] = {name[v]: [] for v in variants}
    for rep in range(args.repeats):
        # Interleaved, and in the opposite order on odd repeats, so a trend in the machine's load falls on all.
        for lay, k, pin in variants if rep % 2 == 0 else variants[::-1]:
            workers, threads = (int(x) for x in lay.split("x"))
            cycles = CyclesConfig(threads=threads, device=args.device, denoise=not args.no_denoise)
            if args.samples:
                cycles = dataclasses.replace(cycles, samples=args.samples)
            cfg = RenderConfig(
                resolution=args.resolution,
                cameras=OrbitSampling(views=args.views),
                cycles=cycles,
                limits=LimitsConfig(objects_per_process=k, pin_cpus=pin == "on"),
            )
            gpus = gpu_count() / workers if args.device == "gpu" else 0.0
            r = one_run(objs, cfg, workers, OUT / name[(lay, k, pin)], gpus_per_worker=gpus)
            results[name[(lay, k, pin)]].append(r)
            sp = r["split_s"]
            print(
                f"rep {rep} {name[(lay, k, pin)]}: wall {r['wall_s']:.1f} s, {r['objects_per_min']:.2f} obj/min, "
                f"{r['views_per_s']:.3f} views/s, overhead {r['overhead'] * 100:.1f}% "
                f"(start+import bpy {sp['start_and_import_bpy']:.1f}, import {sp['import']:.1f}, "
                f"setup {sp['setup']:.1f}, render {sp['render']:.1f}, write {sp['write']:.1f}, "
                f"process {sp['process']:.1f} s), run overhead {r['overhead_run'] * 100:.1f}%, "
                f"{r['reused']} in a reused process, load {r['load']}",
                flush=True,
            )
            for k, c in r["by_class"].items():
                if c["n"]:
                    print(
                        f"    {k}: {c['n']} objects, overhead {c['overhead'] * 100:.1f}% "
                        f"({(c['process'] - c['render']) / c['n']:.2f} s/object outside render calls)",
                        flush=True,
                    )
    base = name[variants[0]]
    for v in variants[1:]:
        wa = sum(r["wall_s"] for r in results[base])
        wb = sum(r["wall_s"] for r in results[name[v]])
        print(f"wall {name[v]} / {base}: {wb / wa:.3f} (below 1: {name[v]} faster)")
    print_scaling(results, variants, name)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
