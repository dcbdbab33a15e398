"""Where a render's time goes, and 2 workers x 1 thread against 1 worker x 2 threads on 2 cores (issue 12).

Run: .venv/bin/python bench/bench_render_workers.py [--views 8 --repeats 2 --layouts 1x2 2x1]

The whole `mvdata render` driver (``mvforge.render.driver.render``) on the same GLBs and settings, each layout
(workers x threads) in turn, ``--repeats`` times, alternating so the load of a shared machine falls on both.
Ray is started once beforehand with the machine's cores, so its start-up is not counted. Per run: wall time,
objects/min, views/s; per object, from meta.json timings, the split of the Blender process's wall time into
process start + ``import bpy`` (process_s - total_s), import, setup (scene, world, Cycles), Cycles render calls
and PNG writes; the overhead fraction = 1 - render calls / process wall (design §8 target ≤ 5% at 32 views).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvforge.cameras import OrbitSampling  # noqa: E402
from mvforge.formats import renders as layout  # noqa: E402
from mvforge.render.config import CyclesConfig, RenderConfig  # noqa: E402
from mvforge.render.plan import SourceObject  # noqa: E402

GLBS = ROOT / "tests" / "data" / "glb"
OUT = ROOT / "bench" / "out" / "render_workers"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_run(objs, cfg: RenderConfig, workers: int, out: Path) -> dict:
    from mvforge.render.driver import render

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = render(objs, out, cfg, workers=workers, show_progress=False)
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
    for obj in objs:
        tm = json.loads((layout.object_dir(out, obj.uid) / layout.META).read_text(encoding="utf-8"))[
            "timings"
        ]
        split["start_and_import_bpy"] += tm["process_s"] - tm["total_s"]
        split["import"] += tm["import_s"]
        split["setup"] += tm["setup_s"]
        split["render"] += tm["render_s"]
        split["write"] += tm["write_s"]
        split["process"] += tm["process_s"]
    return {
        "wall_s": wall,
        "objects_per_min": len(objs) / wall * 60,
        "views_per_s": summary.views / wall,
        "split_s": split,
        "overhead": 1 - split["render"] / split["process"],
        "load": load(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", nargs="*", default=[g.stem for g in sorted(GLBS.glob("*.glb"))])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--samples", type=int, default=None, help="default: CyclesConfig's")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--layouts", nargs="*", default=["1x2", "2x1"], help="WORKERSxTHREADS")
    args = p.parse_args()

    from mvforge.raytools import init_ray

    objs = [
        SourceObject(uid=name, kind="local", ext="glb", path=str((GLBS / f"{name}.glb").resolve()))
        for name in args.objects
    ]
    init_ray(num_cpus=os.cpu_count())
    print(f"# {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load()}")
    results: dict[str, list] = {lay: [] for lay in args.layouts}
    for rep in range(args.repeats):
        for lay in args.layouts:
            workers, threads = (int(x) for x in lay.split("x"))
            cycles = CyclesConfig(threads=threads)
            if args.samples:
                cycles = CyclesConfig(threads=threads, samples=args.samples)
            cfg = RenderConfig(
                resolution=args.resolution, cameras=OrbitSampling(views=args.views), cycles=cycles
            )
            r = one_run(objs, cfg, workers, OUT / lay)
            results[lay].append(r)
            sp = r["split_s"]
            print(
                f"rep {rep} {lay}: wall {r['wall_s']:.1f} s, {r['objects_per_min']:.2f} obj/min, "
                f"{r['views_per_s']:.3f} views/s, overhead {r['overhead'] * 100:.1f}% "
                f"(start+import bpy {sp['start_and_import_bpy']:.1f}, import {sp['import']:.1f}, "
                f"setup {sp['setup']:.1f}, render {sp['render']:.1f}, write {sp['write']:.1f} s), load {r['load']}",
                flush=True,
            )
    if len(args.layouts) == 2:
        a, b = args.layouts
        wa = sum(r["wall_s"] for r in results[a])
        wb = sum(r["wall_s"] for r in results[b])
        print(f"wall {b} / {a}: {wb / wa:.3f} (below 1: {b} faster)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
