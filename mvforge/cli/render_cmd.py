"""`mvdata render`: the CLI of the render stage. Imports nothing heavy at module level (docs/design.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mvforge.cli.common import ADDRESS_HELP, SET_HELP

RENDER_HELP = """Render 3D objects into multi-view RGBA images with Blender (Cycles), in parallel on Ray.

SOURCE, any mix: `demo` (the embedded demo objects); `objaverse` (Objaverse 1.0, selected with --uids, --lvis, --limit and downloaded into --cache-dir inside each render task); a directory (searched recursively for GLB/GLTF, OBJ, FBX, PLY, STL, USD/USDZ, ABC, BLEND); a quoted glob; or single files.

Output: DIR/<uid[:2]>/<uid>/000.png ..., cameras.json and meta.json (written last); DIR/failed/<uid>.json with a reason code for each failure; DIR/manifest.jsonl; DIR/config.toml; DIR/logs/<uid>.log.

Resume: run the same command again; finished objects are not rendered again (--retry-failed, --overwrite).

Example: mvdata render demo ./models '/data/**/*.glb' --out renders --workers 2 --threads 1
"""

_R = "Render settings"
_C = "Cameras"
_S = "Sources"
_L = "Limits"
_X = "Scheduling and resume"


def render(
    sources: Annotated[
        list[str], typer.Argument(help="demo | objaverse | DIR | 'GLOB' | FILE ... (any mix).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output render directory.")],
    workers: Annotated[
        int, typer.Option(help="Concurrent Blender processes (Ray tasks).", rich_help_panel=_X)
    ] = 1,
    threads: Annotated[
        int | None,
        typer.Option(help="Cycles CPU threads per process; workers x threads <= cores.", rich_help_panel=_R),
    ] = None,
    gpus_per_worker: Annotated[
        float,
        typer.Option(help="GPUs per render process (0 = CPU; 0.5 shares a GPU).", rich_help_panel=_X),
    ] = 0.0,
    resolution: Annotated[
        int | None, typer.Option(help="Image side in pixels.", show_default="256", rich_help_panel=_R)
    ] = None,
    views: Annotated[
        int | None, typer.Option(help="Views (azimuths) per orbit.", show_default="32", rich_help_panel=_C)
    ] = None,
    orbits: Annotated[
        int | None,
        typer.Option(
            help="Orbits per object, each with its own elevation/fov.", show_default="1", rich_help_panel=_C
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(help="Cycles samples per pixel (then denoised).", show_default="16", rich_help_panel=_R),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Run seed; cameras and light derive from (seed, uid).", show_default="0", rich_help_panel=_C
        ),
    ] = None,
    shared_cameras: Annotated[
        bool | None,
        typer.Option(
            "--shared-cameras/--per-object-cameras",
            help="Same cameras for every object (drawn from the run seed), for view-by-view comparisons.",
            show_default="per object",
            rich_help_panel=_C,
        ),
    ] = None,
    lighting: Annotated[
        str | None,
        typer.Option(
            help="hdri: one environment map per object (the paper's); lamps: four sun lamps, fewer samples "
            "for the same noise.",
            show_default="hdri",
            rich_help_panel=_R,
        ),
    ] = None,
    hdri_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory of .exr/.hdr maps.",
            show_default="the 8 CC0 HDRIs in the bpy wheel",
            rich_help_panel=_R,
        ),
    ] = None,
    hdri_exposure: Annotated[
        str | None,
        typer.Option(
            help="raw: each HDRI at its own exposure; normalized: every map scaled to one mean radiance "
            "(the exposure_target of the lighting settings).",
            show_default="raw",
            rich_help_panel=_R,
        ),
    ] = None,
    denoise: Annotated[
        bool | None,
        typer.Option(
            "--denoise/--no-denoise", help="OpenImageDenoise pass.", show_default="on", rich_help_panel=_R
        ),
    ] = None,
    adaptive_threshold: Annotated[
        float | None,
        typer.Option(
            help="Cycles adaptive-sampling noise threshold; 0 = off.", show_default="0.01", rich_help_panel=_R
        ),
    ] = None,
    adaptive_min_samples: Annotated[
        int | None,
        typer.Option(
            help="Minimum samples of a pixel before adaptive sampling may stop it: Cycles checks after every "
            "16th sample past it, so 8 = a pixel may stop after 16, 32, ... and nothing changes at --samples 16 "
            "or fewer; 0 = Cycles' automatic rule, 64 at threshold 0.01.",
            show_default="8",
            rich_help_panel=_R,
        ),
    ] = None,
    max_bounces: Annotated[
        int | None, typer.Option(help="Cycles total light bounces.", show_default="4", rich_help_panel=_R)
    ] = None,
    view_transform: Annotated[
        str | None,
        typer.Option(
            help="Standard (plain sRGB) | AgX | Filmic | Raw.", show_default="Standard", rich_help_panel=_R
        ),
    ] = None,
    hdri_visible: Annotated[
        bool | None,
        typer.Option(
            "--hdri-visible/--hdri-hidden",
            help="Show the HDRI behind the object (hidden: a transparent film).",
            show_default="hidden",
            rich_help_panel=_R,
        ),
    ] = None,
    depth: Annotated[
        bool | None,
        typer.Option("--depth/--no-depth", help="Also write 16-bit depth PNGs.", rich_help_panel=_R),
    ] = None,
    normal: Annotated[
        bool | None,
        typer.Option("--normal/--no-normal", help="Also write normal PNGs.", rich_help_panel=_R),
    ] = None,
    albedo: Annotated[
        bool | None,
        typer.Option("--albedo/--no-albedo", help="Also write albedo PNGs.", rich_help_panel=_R),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds per object before its process group is killed.",
            show_default="900",
            rich_help_panel=_L,
        ),
    ] = None,
    memory_gb: Annotated[
        float | None,
        typer.Option(
            help="Resident-memory cap of one render process group, GB.", show_default="16", rich_help_panel=_L
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            help="Extra attempts for a process that crashed, then `crashed`.",
            show_default="1",
            rich_help_panel=_L,
        ),
    ] = None,
    objects_per_process: Annotated[
        int | None,
        typer.Option(
            help="Objects one Blender process renders in turn, 1 = a new process per object.",
            show_default="8",
            rich_help_panel=_L,
        ),
    ] = None,
    max_faces: Annotated[
        int | None,
        typer.Option(
            help="Reject objects above this face count.", show_default="5000000", rich_help_panel=_L
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            help="CSV/JSONL sidecar with uid, path, caption columns for local files.", rich_help_panel=_S
        ),
    ] = None,
    uids: Annotated[
        Path | None, typer.Option(help="objaverse: text file with one uid per line.", rich_help_panel=_S)
    ] = None,
    lvis: Annotated[
        str | None,
        typer.Option(help="objaverse: only this LVIS category (e.g. chair).", rich_help_panel=_S),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="objaverse: the first N uids of the selection.", rich_help_panel=_S)
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="MVFORGE_CACHE",
            help="Download cache (Objaverse metadata and objects).",
            show_default="~/.cache/mvforge",
            rich_help_panel=_S,
        ),
    ] = None,
    objaverse_url: Annotated[
        str | None,
        typer.Option(
            envvar="MVFORGE_OBJAVERSE_URL",
            help="Objaverse base URL: a mirror or a test server.",
            show_default="the allenai/objaverse Hugging Face dataset",
            rich_help_panel=_S,
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help=ADDRESS_HELP, rich_help_panel=_X)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of RenderConfig settings (e.g. a previous DIR/config.toml).",
            rich_help_panel=_X,
        ),
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help=SET_HELP, rich_help_panel=_X)] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Render the objects that failed before again.", rich_help_panel=_X)
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Render every object again, also finished ones, with the new settings.",
            rich_help_panel=_X,
        ),
    ] = False,
) -> None:
    from mvforge.deps import require

    require("mvdata render")
    from mvforge import config as cfglib
    from mvforge.render.config import RenderConfig, check_lighting_kind
    from mvforge.render.driver import render as run_render
    from mvforge.render.sources import ObjaverseSelection, resolve_sources

    flags = {
        "resolution": resolution,
        "orbits": orbits,
        "seed": seed,
        "shared_cameras": shared_cameras,
        "cameras.views": views,
        "cycles.samples": samples,
        "cycles.threads": threads,
        "cycles.denoise": denoise,
        "cycles.adaptive_threshold": adaptive_threshold,
        "cycles.adaptive_min_samples": adaptive_min_samples,
        "cycles.max_bounces": max_bounces,
        "cycles.view_transform": view_transform,
        "lighting.kind": lighting,
        "lighting.hdri_dir": hdri_dir,
        "lighting.exposure": hdri_exposure,
        "lighting.visible_to_camera": hdri_visible,
        "passes.depth": depth,
        "passes.normal": normal,
        "passes.albedo": albedo,
        "limits.timeout_s": timeout,
        "limits.memory_gb": memory_gb,
        "limits.retries": retries,
        "limits.objects_per_process": objects_per_process,
        "limits.max_faces": max_faces,
        "download.cache_dir": cache_dir,
    }
    cfg = cfglib.load(RenderConfig, config, set_ or [], flags)
    # Checked on the merged settings: a flag may change the kind of light a config file set.
    check_lighting_kind(cfg.lighting)
    objects = resolve_sources(
        sources,
        captions=captions,
        objaverse=ObjaverseSelection(uids_file=uids, lvis=lvis, limit=limit),
        cache=cfg.download.cache_dir,
        base_url=objaverse_url,
        download_timeout_s=cfg.download.timeout_s,
        download_retries=cfg.download.retries,
    )
    run_render(
        objects,
        out,
        cfg,
        workers=workers,
        address=address,
        gpus_per_worker=gpus_per_worker,
        retry_failed=retry_failed,
        overwrite=overwrite,
    )
