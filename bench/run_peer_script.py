"""Run objaverse-xl's ``scripts/rendering/blender_script.py`` with the bpy module (no ``blender`` binary).

Usage (one object per process, as objaverse-xl runs it):

    python bench/run_peer_script.py --peer-script PATH --object GLB --out DIR \
        [--views 8 --resolution 256 --samples 32 --threads 2 --seed 0 --denoise --no-adaptive]

objaverse-xl starts ``blender --background --python blender_script.py -- --object_path ... --engine CYCLES``.
Here bpy is a Python module, so this runner executes the script's module body unchanged (its imports, helpers
and ``render_object``) under a name other than ``__main__``, then does what the script's ``__main__`` block
does, with the benchmark's settings in place of its hard-coded ones (512², 128 spp, OpenImageDenoise, CUDA):
render engine CYCLES, PNG RGBA, film transparent, its ``filter_width`` 0.01, and the bounce limits of
mvforge's ``CyclesConfig`` so both sides trace the same paths. Python's and numpy's random
generators are seeded so a reference render (more samples) sees the same cameras and lights.

The script is never copied into this repository: pass the path of your checkout (docs/bench/render_speed.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-script", required=True, type=Path)
    p.add_argument("--object", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--denoise", action="store_true")
    p.add_argument("--no-adaptive", action="store_true", help="adaptive sampling off (reference renders)")
    p.add_argument("--max-bounces", type=int, default=4)
    p.add_argument("--diffuse-bounces", type=int, default=2)
    p.add_argument("--glossy-bounces", type=int, default=2)
    p.add_argument("--transmission-bounces", type=int, default=4)
    p.add_argument("--transparent-bounces", type=int, default=8)
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    import bpy
    import numpy as np

    t_bpy = time.perf_counter()
    source = args.peer_script.read_text(encoding="utf-8")
    ns: dict = {"__name__": "objaverse_xl_blender_script", "__file__": str(args.peer_script)}
    exec(compile(source, str(args.peer_script), "exec"), ns)

    # What the script's __main__ block sets, with the benchmark's values where it hard-codes its own.
    context = bpy.context
    scene = context.scene
    ns["context"], ns["scene"] = context, scene
    render = scene.render
    render.engine = "CYCLES"
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"
    render.resolution_x = render.resolution_y = args.resolution
    render.resolution_percentage = 100
    render.film_transparent = True
    render.threads_mode = "FIXED"
    render.threads = args.threads
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = args.samples
    cycles.use_adaptive_sampling = not args.no_adaptive
    cycles.max_bounces = args.max_bounces
    cycles.diffuse_bounces = args.diffuse_bounces
    cycles.glossy_bounces = args.glossy_bounces
    cycles.transparent_max_bounces = args.transparent_bounces
    cycles.transmission_bounces = args.transmission_bounces
    cycles.filter_width = 0.01
    cycles.use_denoising = args.denoise
    cycles.seed = args.seed

    random.seed(args.seed)
    np.random.seed(args.seed)

    t_setup = time.perf_counter()
    ns["render_object"](
        object_file=args.object,
        num_renders=args.views,
        only_northern_hemisphere=False,
        output_dir=args.out,
    )
    t_end = time.perf_counter()
    timings = {"import_bpy_s": t_bpy - t0, "setup_s": t_setup - t_bpy, "render_object_s": t_end - t_setup}
    Path(args.out, "peer_timings.json").write_text(json.dumps(timings), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
