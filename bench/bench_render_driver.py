"""Dry run of the `mvdata render` driver at 10⁵ objects: time and peak memory per phase, no rendering
(docs/bench/render_speed.md).

Run: .venv/bin/python bench/bench_render_driver.py --n 1000 10000 100000 [--workers 8 --done 0.5]

Each N runs in a fresh Python process (so peak RSS is that N's), over N synthetic sources (uids are hex digests,
as Objaverse's, so the ``<uid[:2]>`` fan-out is realistic; every source names one small real file) in a render
directory where a ``--done`` fraction of them already has its meta.json (a resumed run). Phases, timed one by
one with the driver's own functions, then the whole ``driver.render`` with
``tests.fixtures.synthetic.stub_render_task`` as the Ray task (it writes each object's terminal record):
validate, resume scan (layout.status), same-source check (sha256 of each finished object's file),
manifest preparation, planning (plan_job: cameras, HDRI, seed), then the full call (Ray start + task
submission through bounded_map + manifest appends), then a second call over the finished directory (nothing
to render). Prints per-phase seconds, µs per object and the driver's peak RSS, and the growth ratio per 10×
of N: ~10 means linear.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "tests" / "data" / "glb" / "BoxTextured.glb"


def one(n: int, workers: int, done: float, workdir: Path) -> dict:
    from mvforge.formats import renders as layout
    from mvforge.fsutil import atomic_write_json
    from mvforge.render import driver
    from mvforge.render.config import RenderConfig
    from mvforge.render.download import sha256_file
    from mvforge.render.plan import SourceObject, hdri_pool, plan_job
    from tests.fixtures.synthetic import stub_render_task

    out = workdir / "renders"
    sha = sha256_file(SOURCE)
    st = os.stat(SOURCE)
    # What the runner records beside the sha256 (size, mtime), so a resume re-hashes only changed files.
    recorded = {
        "kind": "local",
        "path": str(SOURCE),
        "sha256": sha,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    sources = [
        SourceObject(
            uid=hashlib.sha256(str(i).encode()).hexdigest()[:32], kind="local", ext="glb", path=str(SOURCE)
        )
        for i in range(n)
    ]
    cfg = RenderConfig()
    t = time.perf_counter()
    n_done = int(n * done)
    for obj in sources[:n_done]:
        meta = layout.RenderMeta(uid=obj.uid, source=recorded)
        atomic_write_json(layout.object_dir(out, obj.uid) / layout.META, meta.to_dict())
    build_s = time.perf_counter() - t

    phases: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        # CPU seconds of this (driver) process beside the wall time: on a shared machine the wall time of a
        # phase swings with the load, its CPU time does not.
        t0, c0 = time.perf_counter(), time.process_time()
        r = fn(*a, **k)
        phases[name] = time.perf_counter() - t0
        cpu[name] = time.process_time() - c0
        return r

    timed("validate", driver._validate, sources, cfg, workers, 0.0)
    pool = hdri_pool(None)
    states = timed("resume_scan", lambda: {o.uid: layout.status(out, o.uid) for o in sources})
    timed("same_source_check", driver._check_same_sources, out, [o for o in sources if states[o.uid] == "ok"])
    todo = [o for o in sources if states[o.uid] is None]
    # Each job is dropped once planned, as the driver's submit does: holding them all would be the bench's memory.
    timed("plan", lambda: sum(len(plan_job(o, cfg, pool)["views"]) for o in todo))
    kwargs = {"workers": workers, "show_progress": False, "task": stub_render_task}
    summary = timed("render_call", driver.render, sources, out, cfg, **kwargs)
    before = ("validate", "resume_scan", "same_source_check", "plan")
    phases["submit_and_record"] = phases["render_call"] - sum(phases[k] for k in before)
    cpu["submit_and_record"] = cpu["render_call"] - sum(cpu[k] for k in before)
    again = timed("resume_finished", driver.render, sources, out, cfg, **kwargs)
    manifest = (out / layout.MANIFEST).read_text(encoding="utf-8").count("\n")
    assert summary.counts.get("ok") == n - n_done and again.skipped == n, (summary, again)
    assert manifest == n, manifest
    return {
        "n": n,
        "done_before": n_done,
        "rendered": summary.counts.get("ok", 0),
        "workers": workers,
        "build_tree_s": build_s,
        "phases_s": phases,
        "phases_cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--done", type=float, default=0.5, help="fraction finished before the run (resume)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="mvforge-dryrun-") as tmp:
            print(json.dumps(one(args.n[0], args.workers, args.done, Path(tmp))))
        return
    rows = []
    for n in args.n:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        cmd = [sys.executable, __file__, "--child", "--n", str(n), "--workers", str(args.workers)]
        cmd += ["--done", str(args.done)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(res.stdout.strip().splitlines()[-1]) | {"load": load}
        rows.append(row)
        ph = row["phases_s"]
        print(
            f"n={n}: "
            + ", ".join(
                f"{k} {v:.2f} s (cpu {row['phases_cpu_s'][k]:.2f} s, {v / n * 1e6:.0f} µs/obj)"
                for k, v in ph.items()
            )
            + f"; peak RSS {row['peak_rss_mb']:.0f} MB; load {load}",
            flush=True,
        )
    for a, b in zip(rows, rows[1:], strict=False):
        k = b["n"] / a["n"]
        for key in ("phases_s", "phases_cpu_s"):
            growth = {ph: b[key][ph] / max(a[key][ph], 1e-9) for ph in a[key]}
            print(
                f"{key} {a['n']} -> {b['n']} (x{k:g}): "
                + ", ".join(f"{ph} x{g:.1f}" for ph, g in growth.items())
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
