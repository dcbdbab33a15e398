"""Benchmark of `mvdata render`'s driver side: 1 vs 2 workers, per-object RSS, and the objaverse-xl way.

Run: .venv/bin/python bench/bench_render.py [--resolution 128 --views 8 --samples 16 --repeat 2]

Measured side by side in one run, on the same objects and settings:
1. mvforge with 1 worker and with 2 workers (Ray started once beforehand, so its start-up is not counted):
   objects/min, and the overhead fraction = 1 - (Cycles render time / process wall time) per object.
2. Resident memory of each object's render process group (the runner's peak, from meta.json) over the series:
   one fresh Blender process per object, so it should stay flat.
3. The objaverse-xl way: one `python -c` Blender subprocess per object, one after the other, that resets the
   scene, imports, normalises (its own bounding-box code) and renders the same cameras, HDRI and Cycles
   settings, writing each view with write_still (no persistent data, as in objaverse-xl's script).
Prints ratios; figures go to docs/bench/render.md by hand, with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvforge.cameras import OrbitSampling  # noqa: E402
from mvforge.formats import renders as layout  # noqa: E402
from mvforge.render.config import CyclesConfig, LimitsConfig, RenderConfig  # noqa: E402
from mvforge.render.plan import SourceObject, hdri_pool, plan_job  # noqa: E402

GLBS = ROOT / "tests" / "data" / "glb"

# The objaverse-xl render loop in miniature: fresh factory scene, import, drop cameras/lights, normalise the
# world bounding box of the meshes into a unit cube at the origin, HDRI world, Cycles, render each view.
XL_SCRIPT = r"""
import json, math, sys
import bpy
from mathutils import Matrix, Vector

job = json.load(open(sys.argv[1]))
out = sys.argv[2]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=job["input_path"])
scene = bpy.context.scene
for o in list(scene.objects):
    if o.type in ("CAMERA", "LIGHT"):
        bpy.data.objects.remove(o, do_unlink=True)

def bbox():
    lo, hi = [math.inf] * 3, [-math.inf] * 3
    for o in scene.objects:
        if o.type == "MESH":
            for c in o.bound_box:
                p = o.matrix_world @ Vector(c)
                lo = [min(a, b) for a, b in zip(lo, p)]
                hi = [max(a, b) for a, b in zip(hi, p)]
    return Vector(lo), Vector(hi)

roots = [o for o in scene.objects if o.parent is None]
lo, hi = bbox()
scale = 1.0 / max(hi - lo)
for o in roots:
    o.matrix_world = Matrix.Scale(scale, 4) @ o.matrix_world
bpy.context.view_layer.update()
lo, hi = bbox()
offset = -(lo + hi) / 2
for o in roots:
    o.matrix_world = Matrix.Translation(offset) @ o.matrix_world
bpy.context.view_layer.update()

world = bpy.data.worlds.new("env")
scene.world = world
world.use_nodes = True
nodes, links = world.node_tree.nodes, world.node_tree.links
nodes.clear()
env = nodes.new("ShaderNodeTexEnvironment")
env.image = bpy.data.images.load(job["hdri"]["path"])
bg = nodes.new("ShaderNodeBackground")
bg.inputs["Strength"].default_value = job["hdri"]["strength"]
wout = nodes.new("ShaderNodeOutputWorld")
links.new(env.outputs["Color"], bg.inputs["Color"])
links.new(bg.outputs["Background"], wout.inputs["Surface"])
world.cycles_visibility.camera = False

c = job["cycles"]
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = c["samples"]
scene.cycles.use_adaptive_sampling = c["adaptive_threshold"] > 0
scene.cycles.adaptive_threshold = c["adaptive_threshold"]
scene.cycles.use_denoising = c["denoise"]
scene.cycles.max_bounces = c["max_bounces"]
scene.cycles.diffuse_bounces = c["diffuse_bounces"]
scene.cycles.glossy_bounces = c["glossy_bounces"]
scene.cycles.transmission_bounces = c["transmission_bounces"]
scene.cycles.transparent_max_bounces = c["transparent_bounces"]
scene.render.threads_mode = "FIXED"
scene.render.threads = c["threads"]
scene.render.resolution_x = scene.render.resolution_y = job["resolution"]
scene.render.resolution_percentage = 100
scene.render.film_transparent = True
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_mode = "RGBA"
scene.view_settings.view_transform = c["view_transform"]

cam_data = bpy.data.cameras.new("cam")
cam_data.lens_unit = "FOV"
cam = bpy.data.objects.new("cam", cam_data)
scene.collection.objects.link(cam)
scene.camera = cam
for v in job["views"]:
    cam.matrix_world = Matrix(v["c2w"])
    cam_data.angle = math.radians(v["fov_deg"])
    scene.render.filepath = f"{out}/{v['index']:03d}.png"
    bpy.ops.render.render(write_still=True)
"""


def objects(n: int) -> list[SourceObject]:
    """``n`` objects cycling over the test GLBs (and the demo objects when the assets module has them)."""
    files = sorted(GLBS.glob("*.glb"))
    try:
        from mvforge.assets import list_demo_objects

        files += [Path(d.path) for d in list_demo_objects()]
    except ImportError:
        pass
    out = []
    for i in range(n):
        f = files[i % len(files)]
        out.append(SourceObject(uid=f"b{i:03d}_{f.stem[:20]}", kind="local", ext="glb", path=str(f)))
    return out


def run_mvforge(objs, cfg, workers: int, out: Path) -> dict:
    from mvforge.render.driver import render

    t = time.monotonic()
    summary = render(objs, out, cfg, workers=workers, show_progress=False)
    wall = time.monotonic() - t
    metas = [json.loads((layout.object_dir(out, o.uid) / layout.META).read_text()) for o in objs]
    render_s = sum(m["timings"]["render_s"] for m in metas)
    process_s = sum(m["timings"]["process_s"] for m in metas)
    return {
        "wall_s": wall,
        "ok": summary.counts.get("ok", 0),
        "objects_per_min": len(objs) / wall * 60,
        "overhead_fraction": 1 - render_s / process_s,
        "rss_mb": [m["peak_rss_mb"] for m in metas],
    }


def run_xl(objs, cfg, out: Path) -> dict:
    pool = hdri_pool(None)
    t = time.monotonic()
    for o in objs:
        job = plan_job(o, cfg, pool)
        d = out / o.uid
        d.mkdir(parents=True)
        (d / "job.json").write_text(json.dumps(job))
        subprocess.run(
            [sys.executable, "-c", XL_SCRIPT, str(d / "job.json"), str(d)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    wall = time.monotonic() - t
    return {"wall_s": wall, "objects_per_min": len(objs) / wall * 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args()
    cfg = RenderConfig(
        resolution=args.resolution,
        cameras=OrbitSampling(views=args.views),
        cycles=CyclesConfig(samples=args.samples, threads=1),
        limits=LimitsConfig(timeout_s=600, retries=0),
    )
    objs = objects(args.objects)
    print(
        f"{platform.node()} {os.cpu_count()} cores, python {platform.python_version()}; {len(objs)} objects, "
        f"{args.resolution}px, {args.views} views, {args.samples} samples, 1 Cycles thread per process"
    )
    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_render_"))
    runs: dict[str, list[dict]] = {"xl": [], "w1": [], "w2": []}
    try:
        run_mvforge(objs[:2], cfg, 2, tmp / "warmup")  # start Ray's worker processes before timing
        # A-B-C then C-B-A: on a shared machine the load drifts; the mirrored order cancels a linear drift.
        for i, name in enumerate(["xl", "w1", "w2", "w2", "w1", "xl"]):
            out = tmp / f"{name}-{i}"
            if name == "xl":
                runs[name].append(run_xl(objs, cfg, out))
            else:
                runs[name].append(run_mvforge(objs, cfg, int(name[1]), out))
            print(f"  pass {i}: {name} {runs[name][-1]['wall_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    xl, one, two = (_mean(runs[k]) for k in ("xl", "w1", "w2"))
    print(
        f"objaverse-xl way (1 process/object, sequential): {xl['wall_s']:.1f} s, {xl['objects_per_min']:.2f} obj/min"
    )
    for name, r in (("mvforge 1 worker ", one), ("mvforge 2 workers", two)):
        print(
            f"{name}: {r['wall_s']:.1f} s, {r['objects_per_min']:.2f} obj/min, ok {r['ok']:.0f}/{len(objs)}, "
            f"overhead outside Cycles sampling {r['overhead_fraction'] * 100:.1f}%"
        )
    print(
        f"ratio mvforge 1 worker / objaverse-xl way (throughput): {one['objects_per_min'] / xl['objects_per_min']:.2f}"
    )
    print(
        f"scaling 2 workers / 1 worker: {two['objects_per_min'] / one['objects_per_min']:.2f} (linear = 2.00)"
    )
    print(f"peak RSS per object (MB, in order, 1 worker, both passes): {[r['rss_mb'] for r in runs['w1']]}")


def _mean(rs: list[dict]) -> dict:
    return {k: sum(r[k] for r in rs) / len(rs) for k in rs[0] if k != "rss_mb"}


if __name__ == "__main__":
    main()
