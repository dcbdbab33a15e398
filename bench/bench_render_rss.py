"""Memory over a long render run (design §8: per-worker RSS flat over many objects).

Renders N objects (the 12 demo GLBs, repeated under new uids) with 1 worker at a tiny size, so the run is
dominated by per-object work (start Blender, import, normalise, write), and samples twice a second the RSS of
the Ray worker processes that own the render tasks. Also reports each object's peak render-process RSS
(runner's /proc measurement, from meta.json). A leak shows as a rising slope; the first/last-tenth ratio and a
least-squares slope per 100 objects are printed.

    .venv/bin/python bench/bench_render_rss.py --objects 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mvforge.assets import list_demo_objects
from mvforge.config import load
from mvforge.formats import renders as layout
from mvforge.render.config import RenderConfig
from mvforge.render.driver import render
from mvforge.render.sources import resolve_sources


def ray_worker_rss_mb() -> dict[int, float]:
    """RSS (MB) of each process whose title is a Ray task worker (``ray::...``), by pid."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not cmd.startswith("ray::"):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[int(pid)] = int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    src = tmp / "src"
    src.mkdir()
    demo = list_demo_objects()
    for i in range(args.objects):
        d = demo[i % len(demo)]
        shutil.copy(d.path, src / f"obj{i:03d}-{d.uid}.glb")
    cfg = load(RenderConfig, None, ["resolution=32", "cameras.views=2", "cycles.samples=1"])
    objs = resolve_sources([str(src)])
    samples: list[tuple[float, int, float]] = []  # (time, objects done, max worker RSS)
    stop = threading.Event()
    out = tmp / "renders"

    def poll() -> None:
        while not stop.is_set():
            rss = ray_worker_rss_mb()
            done = len(list(out.glob(f"*/*/{layout.META}"))) if out.exists() else 0
            if rss:
                samples.append((time.monotonic(), done, max(rss.values())))
            time.sleep(0.5)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    t0 = time.monotonic()
    render(objs, out, cfg, workers=1, show_progress=False)
    wall = time.monotonic() - t0
    stop.set()
    t.join()
    metas = [json.loads(p.read_text()) for p in sorted(out.glob(f"*/*/{layout.META}"))]
    peaks = [m.get("peak_rss_mb") for m in metas]
    # One value per number of finished objects: the median of the samples taken meanwhile. Single samples can
    # catch a fork of the worker before exec (the child still carries the worker's title), so medians, not max.
    by_done: dict[int, list[float]] = {}
    for _, n, r in samples:
        by_done.setdefault(n, []).append(r)
    done = np.array(sorted(by_done), float)
    rss = np.array([np.median(by_done[int(n)]) for n in done])
    tenth = max(1, len(rss) // 10)
    slope = float(np.polyfit(done, rss, 1)[0]) * 100 if len(done) > 1 else float("nan")
    print(json.dumps({"objects": args.objects, "ok": len(metas), "wall_s": round(wall, 1)}))
    print(
        f"Ray task-worker RSS (MB): first tenth mean {rss[:tenth].mean():.1f}, last tenth mean "
        f"{rss[-tenth:].mean():.1f}, ratio {rss[-tenth:].mean() / rss[:tenth].mean():.3f}, "
        f"slope {slope:+.2f} MB per 100 objects, max {rss.max():.1f}"
    )
    p = np.array([x for x in peaks if x is not None], float)
    if len(p):
        print(
            f"render-process peak RSS (MB) per object: min {p.min():.0f}, median {np.median(p):.0f}, "
            f"max {p.max():.0f}; first 10 mean {p[:10].mean():.0f}, last 10 mean {p[-10:].mean():.0f}"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
