"""The Blender (bpy) scene adapter: executes one render job inside a fresh Blender process (docs/design.md
§2.1, §3, §4).

The only module of mvforge that imports ``bpy`` (docs/design.md §1). Everything it decides was decided by the
planner (``mvforge.render.plan.plan_job``): cameras, HDRI or lamp rig, rotation, strength, seed. This module
only executes:

1. a fresh empty scene; the file's encoding, its external references (docs/render_failures.md: nothing outside
   the object's folder is read) and positions the importer would silently repair (NaN/inf) are checked first
   (``mvforge.render.precheck``, ``mvforge.render.references``), then the format's bpy 5 importer (a .blend:
   the objects of the scene it opens with); the images and libraries Blender loaded are checked again;
2. drop cameras and lights, evaluate armatures and shape keys at frame 0, gather what renders (faces, point
   clouds, curves; not loose vertices or hidden objects);
3. guards (reason codes of ``mvforge.formats.renders.REASONS``), missing textures (fail or strip), vertex-colour
   materials (docs/render_failures.md), then normalise what renders into [-0.5, 0.5]^3 (docs/design.md §3);
4. HDRI world (or sun lamps and a uniform ambient), Cycles with every setting explicit, one camera whose ``matrix_world`` is the view's c2w;
5. per view: RGBA PNG plus optional depth / normal / albedo passes, then ``cameras.json``.

Failures that belong to the object (bad file, no mesh, ...) raise :class:`RenderFailure` with a reason code; the
worker turns it into a failure record. Anything else is a crash, handled by the runner.
"""

from __future__ import annotations

import math
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Vector

from mvforge.cameras import View, orbit_position
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_bytes, atomic_write_json
from mvforge.render import exposure, precheck, references
from mvforge.render.config import adaptive_min_samples_used

# Object types whose evaluated form is a mesh Cycles renders (curves with bevel, text and metaballs included).
GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "FONT", "META"}
# Object types Cycles renders as points or strands: counted in the bounding box, without faces
# (they render, so they count; docs/design.md §2.1).
POINT_TYPES = {"POINTCLOUD", "CURVES"}
# Imported objects that would change the lighting or the camera: the job decides both (docs/design.md §2.1).
DROPPED_TYPES = {"CAMERA", "LIGHT", "LIGHT_PROBE", "SPEAKER"}
# A bounding box whose longest side is below this fraction of its distance from the origin (or below it in
# absolute terms, for objects near the origin) holds no usable shape: float32 vertices resolve ~1e-7 relative.
ZERO_EXTENT_REL = 1e-8
# Evaluate animated objects (armatures, shape keys) at frame 0: the rest/first pose, the
# same for every view of an object.
EVAL_FRAME = 0
# Depth pass encoding (16-bit PNG): value = depth / depth_max x 65535 with 0 = background (no hit). depth_max
# covers the whole normalised object from every view: camera distance + half the cube's diagonal (sqrt(3)/2).
DEPTH_PNG_MAX = 65535
CUBE_HALF_DIAGONAL = math.sqrt(3.0) / 2.0
# GPU backends in the order of preference of docs/design.md §4.
GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "METAL")
NORMALIZE_EMPTY = "mvforge_normalize"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_DROPPED_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME"}


class RenderFailure(Exception):
    """A classified per-object failure: ``reason`` is one of ``mvforge.formats.renders.REASONS``."""

    def __init__(self, reason: str, message: str):
        if reason not in layout.REASONS:
            raise ValueError(f"unknown render failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def render_job(job: dict, staging: Path) -> dict:
    """Render ``job`` (a ``plan_job`` dict) into ``staging``; return normalization, stats, timings, versions."""
    staging = Path(staging)
    t0 = time.perf_counter()

    # 1. Fresh scene and import.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    importer, input_path = job["importer"], job["input_path"]
    materials = job["materials"]
    policy = materials["missing_textures"]
    # Before any importer or reader opens a referenced file (the outside-reference rule, docs/render_failures.md).
    missing_materials = check_before_import(importer, input_path, policy)
    positions_check = check_positions_before_import(importer, input_path)
    loaded = import_object(importer, input_path)
    check_loaded_references(str(Path(input_path).parent))
    t_import = time.perf_counter()

    # 2-4. Clean up, evaluate, guard, normalise, count.
    scene = bpy.context.scene
    drop_cameras_and_lights()
    scene.frame_set(EVAL_FRAME)
    geo = evaluated_geometry()
    limits = job["limits"]
    check_geometry(geo, int(limits["max_faces"]), int(limits["max_evaluated_faces"]))
    legacy = handle_legacy_textures(loaded.get("legacy_textures") or [], policy)
    missing, stripped = handle_missing_textures(policy)
    vertex_colors = apply_vertex_colors(bool(materials["vertex_colors"]))
    normalization = normalize(geo.points)
    # Under "strip", every texture or material the render lost counts as stripped: the filter drops the
    # object unless gates.keep_stripped_textures is set (docs/render_failures.md).
    stats = scene_stats(geo, missing, stripped + legacy + len(missing_materials), vertex_colors)
    stats["legacy_textures"] = legacy
    stats["missing_materials"] = len(missing_materials)
    stats["positions_precheck"] = positions_check
    if "blend_scene" in loaded:
        stats["blend_scene"] = loaded["blend_scene"]

    # 5-6. World, engine and output settings.
    hdri_applied = None
    if job["hdri"] is None:
        setup_lamps(job["lamps"])
    else:
        hdri_applied = setup_world(job["hdri"], int(job["cycles"]["world_map_resolution"]))
    device = setup_cycles(job["cycles"], int(job["seed"]), int(job["resolution"]))
    views = [view_from_dict(v) for v in job["views"]]
    depth_max = max(v.distance for v in views) + CUBE_HALF_DIAGONAL
    outputs = setup_passes(job["passes"], staging, depth_max)
    camera = add_camera()
    t_setup = time.perf_counter()

    # 7. One render per view.
    render_s = write_s = 0.0
    any_alpha = False
    for v, spec in zip(views, job["views"], strict=True):
        camera.matrix_world = Matrix(spec["c2w"])
        camera.data.angle = math.radians(v.fov_deg)
        if outputs is not None:
            outputs.file_name = f"{v.index:03d}."
        t = time.perf_counter()
        bpy.ops.render.render(write_still=False)
        t2 = time.perf_counter()
        # Once one view shows the object, the others need no alpha check (a PNG decode per view).
        any_alpha |= save_view(staging / layout.view_name(v.index), check_alpha=not any_alpha)
        render_s += t2 - t
        write_s += time.perf_counter() - t2

    # 8. Cameras (written even when the render is empty: the staging dir is discarded on failure anyway).
    passes = passes_record(job["passes"], depth_max)
    record = layout.cameras_record(views, int(job["resolution"]), passes, framing=job["framing"])
    atomic_write_json(staging / layout.CAMERAS, record)
    if not any_alpha:
        raise RenderFailure("empty_render", f"all {len(views)} views have an all-zero alpha channel")
    total = time.perf_counter() - t0
    return {
        "normalization": normalization,
        "stats": stats,
        "timings": {
            "import_s": t_import - t0,
            "setup_s": t_setup - t_import,
            "render_s": render_s,
            "write_s": write_s,
            "total_s": total,
        },
        "blender": bpy.app.version_string,
        "device": device,
        "cycles": cycles_record(),
        "hdri": hdri_applied,
    }


# --- 1. import -------------------------------------------------------------------------------------------------


def import_object(importer: str | None, input_path: str | None) -> dict:
    """Import ``input_path`` with the bpy 5 operator of ``importer``; any failure is ``import_error`` whose
    message is the cause in one line (:func:`cause_line`; the traceback stays in the log).

    Returns what the import found beyond the scene: for a .blend, ``blend_scene`` (meta.json ``stats``) and
    ``legacy_textures`` (:func:`load_blend_scene`); {} otherwise.
    """
    if importer is None:
        raise RenderFailure("unsupported_format", f"no importer for {input_path!r}")
    if not input_path or not os.path.isfile(input_path):
        raise RenderFailure("import_error", f"input file {input_path!r} does not exist")
    if importer == "blend":
        return load_blend_scene(input_path)
    operators = {
        "gltf": bpy.ops.import_scene.gltf,
        "obj": bpy.ops.wm.obj_import,
        "fbx": bpy.ops.import_scene.fbx,
        "ply": bpy.ops.wm.ply_import,
        "stl": bpy.ops.wm.stl_import,
        "usd": bpy.ops.wm.usd_import,
        "alembic": bpy.ops.wm.alembic_import,
    }
    if importer not in operators:
        raise RenderFailure("unsupported_format", f"unknown importer {importer!r}")
    if importer == "fbx":
        allow_fbx_lights()
    try:
        result = operators[importer](filepath=str(input_path))
    except Exception as e:  # importers report bad files as RuntimeError, some as Python errors of their own
        print(f"mvforge: {importer} import raised:\n{e}", flush=True)  # the whole text stays in the log
        raise RenderFailure("import_error", f"{importer} import failed: {cause_line(e)}") from e
    if "FINISHED" not in result:
        raise RenderFailure("import_error", f"{importer} import returned {sorted(result)}")
    return {}


def check_before_import(importer: str | None, input_path: str | None, policy: str) -> list[str]:
    """Checks of the file's own bytes before any reader follows them; returns an OBJ's missing materials.

    Raises :class:`RenderFailure`: ``unsupported_format`` for a text format in a wide encoding or an obsolete
    sub-format (``precheck.unsupported_encoding``), ``outside_reference`` for a glTF or OBJ reference outside
    the object's folder (``mvforge.render.references``), ``missing_reference`` for a glTF buffer file that does
    not exist, and for an OBJ whose .mtl or material is missing under ``materials.missing_textures = "fail"`` (under ``strip`` they render grey and are counted).
    """
    if not importer or not input_path or not os.path.isfile(input_path):
        return []  # import_object reports it
    why = precheck.unsupported_encoding(importer, input_path)
    if why:
        raise RenderFailure("unsupported_format", why)
    refusals = []
    if importer == "gltf":
        refusals = references.gltf_refusals(input_path)
    elif importer == "obj":
        refusals = references.obj_refusals(input_path)
    if refusals:
        raise_outside(refusals)
    if importer == "gltf" and (gone := references.gltf_missing_buffers(input_path)):
        raise RenderFailure(
            "missing_reference",
            f"glTF buffer file(s) {', '.join(map(repr, gone[:5]))} not found beside the file",
        )
    if importer != "obj":
        return []
    missing = references.obj_missing_materials(input_path)
    if missing and policy != "strip":
        raise RenderFailure(
            "missing_reference",
            f"OBJ {'; '.join(missing)}: it would render default grey "
            "(set materials.missing_textures = 'strip' to render it so and flag it)",
        )
    return missing


def raise_outside(refusals: list[str]) -> None:
    more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
    raise RenderFailure("outside_reference", f"{refusals[0]}{more}; nothing outside it is read")


def check_loaded_references(root: str) -> None:
    """Refuse (``outside_reference``) any image or library Blender loaded or would load from outside ``root``,
    before a pixel of it is read: FBX and USD texture paths, .blend images and libraries (resolved with
    ``bpy.path.abspath``), and whatever an importer resolved on its own. Packed images carry their pixels."""
    refusals = []
    for lib in bpy.data.libraries:
        path = bpy.path.abspath(lib.filepath, library=lib.parent)
        why = references.outside_resolved(path, root)
        if why:
            refusals.append(f"linked library {lib.filepath!r}: {why}")
    for img in bpy.data.images:
        if img.source not in {"FILE", "SEQUENCE", "TILED", "MOVIE"} or img.packed_file is not None:
            continue
        if not img.filepath:
            continue
        path = bpy.path.abspath(img.filepath, library=img.library)
        why = references.outside_resolved(path, root)
        if why:
            refusals.append(f"image {img.filepath!r}: {why}")
    if refusals:
        raise_outside(refusals)


def allow_fbx_lights() -> None:
    """Let Blender 5.0.1's bundled FBX importer read files that hold a light.

    Its ``blen_read_light`` sets ``light.cycles.cast_shadow``, a property Cycles no longer has, so every FBX
    with a light failed with AttributeError. mvforge removes lights after the import anyway (the job decides the
    lighting, docs/design.md §2.1), so the light only needs to exist. The importer's module is wrapped in
    memory, never edited on disk; tests/render/test_render_fidelity_3.py fails once the importer no longer
    needs this.
    """
    from io_scene_fbx import import_fbx

    original = import_fbx.blen_read_light
    if getattr(original, "mvforge_wrapped", False):
        return

    def read_light(fbx_tmpl, fbx_obj, settings):
        try:
            return original(fbx_tmpl, fbx_obj, settings)
        except AttributeError as e:
            if "cast_shadow" not in str(e):
                raise
            # The light the original made before failing stays an unused data block; a plain one replaces it.
            name = import_fbx.elem_name_ensure_class(fbx_obj, b"NodeAttribute")
            return bpy.data.lights.new(name=name, type="POINT")

    read_light.mvforge_wrapped = True
    import_fbx.blen_read_light = read_light


TRACEBACK_HEAD = "Traceback (most recent call last):"


def cause_line(e: BaseException) -> str:
    """The cause of an importer error in one line: the exception type and message, or the importer's own error
    line. Python importers (glTF, FBX) report a crash as a RuntimeError whose text is the whole traceback; its
    last ``Type: message`` line is the cause."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any(TRACEBACK_HEAD in ln for ln in lines):
        causes = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", ln)]
        if causes:
            return clip(causes[-1])
    for ln in lines:
        ln = re.sub(r"^(Error|Warning|Python):\s*", "", ln)
        ln = re.sub(r"^(Error|Python):\s*", "", ln)
        if ln and TRACEBACK_HEAD not in ln:
            return clip(f"{type(e).__name__}: {ln}")
    return f"{type(e).__name__}"


def clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_positions_before_import(importer: str | None, input_path: str | None) -> str:
    """Fail ``non_finite`` when the file holds NaN/inf positions its importer would silently set to 0
    (docs/design.md §2.1, non-finite positions); return how the positions were checked
    (``mvforge.render.precheck``), recorded in meta.json stats."""
    if not input_path or not os.path.isfile(input_path):
        return "not_needed"  # import_object reports the missing file
    bad, how = precheck.non_finite_positions(importer, input_path)
    if bad:
        what = "POSITION accessors with non-finite bounds" if how == "accessor_bounds" else "positions"
        raise RenderFailure(
            "non_finite",
            f"{bad} {what} are NaN or infinite in the file (the {importer} importer would silently set them to 0)",
        )
    return how


def load_blend_scene(path: str) -> dict:
    """Put into the fresh scene what the .blend's own scene renders, with its scripts never run.

    A .blend is a file of scenes (docs/render_failures.md): the scene it opens with (its window's scene) is
    the object. The file is opened once to read that scene: the objects of its collections that the active view
    layer does not exclude and that are enabled for rendering (collection instances come along with their
    instancing empties and are expanded at evaluation; objects disabled for rendering are kept, never rendered).
    Then the factory scene is restored and those objects are appended into it, so no render setting of the
    file applies. Linked libraries are checked while the file is open: outside the object's folder
    ``outside_reference``, missing ``missing_reference``.

    Returns ``blend_scene`` (name, scenes in the file, objects appended; meta.json ``stats``) and
    ``legacy_textures`` (:func:`legacy_texture_images`).
    """
    root = str(Path(path).parent)
    # Auto-execution stays off: a downloaded .blend can carry Python drivers and startup scripts.
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    try:
        bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False, use_scripts=False)
    except Exception as e:
        print(f"mvforge: opening the .blend raised:\n{e}", flush=True)
        raise RenderFailure("import_error", f"blend open failed: {cause_line(e)}") from e
    check_libraries(root)
    scene, layer = bpy.context.scene, bpy.context.view_layer
    shown = shown_objects(scene.collection, layer.layer_collection)
    groups: dict[str, list[str]] = {}
    for obj in shown:
        source = bpy.path.abspath(obj.library.filepath, library=obj.library.parent) if obj.library else path
        groups.setdefault(source, []).append(obj.name)
    info = {
        "blend_scene": {"name": scene.name, "scenes": len(bpy.data.scenes), "objects": len(shown)},
        "legacy_textures": legacy_texture_images(),
    }
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    target = bpy.context.scene.collection
    for source, names in groups.items():
        wanted = set(names)
        try:
            with bpy.data.libraries.load(source, link=False) as (src, dst):
                dst.objects = [name for name in src.objects if name in wanted]
        except Exception as e:
            raise RenderFailure("import_error", f"blend append failed: {cause_line(e)}") from e
        for obj in dst.objects:
            if obj is not None:
                target.objects.link(obj)
    return info


def shown_objects(collection, layer_collection) -> list:
    """Objects of a scene's master ``collection`` and of the child collections that its view layer (whose tree
    of layer collections is ``layer_collection``) does not exclude and that are enabled for rendering. Objects
    disabled for rendering come along: they never render, and ``evaluated_geometry`` counts them as hidden."""
    found = {o.name_full: o for o in collection.objects}

    def walk(lc) -> None:
        for child in lc.children:
            if child.exclude or child.collection.hide_render:
                continue
            found.update({o.name_full: o for o in child.collection.objects})
            walk(child)

    walk(layer_collection)
    return list(found.values())


def check_libraries(root: str) -> None:
    """Linked libraries of the open .blend: a path outside ``root`` or not relative to the .blend is
    ``outside_reference``; a library file that does not exist is ``missing_reference`` (its content would be
    missing from the render without a word)."""
    refusals, missing = [], []
    for lib in bpy.data.libraries:
        raw = lib.filepath
        path = bpy.path.abspath(raw, library=lib.parent)
        if not raw.startswith("//"):
            refusals.append(
                f"linked library {raw!r} is an absolute path (only files beside the object may be read)"
            )
            continue
        why = references.outside_resolved(path, root)
        if why:
            refusals.append(f"linked library {raw!r}: {why}")
        elif not os.path.isfile(path):
            missing.append(raw)
    if refusals:
        raise_outside(refusals)
    if missing:
        raise RenderFailure(
            "missing_reference",
            f"linked librar{'y' if len(missing) == 1 else 'ies'} {', '.join(map(repr, missing[:5]))} "
            "not found; the linked content would be missing from the render",
        )


# Blender version whose files first hold materials as node trees only: older files used texture slots.
NODE_MATERIALS_VERSION = (2, 80, 0)


def legacy_texture_images() -> list[str]:
    """Images of an open pre-2.80 .blend that its materials showed through texture slots, which Blender 2.80
    removed: the image texture survives the load but nothing uses it (0 users) and no shader node shows its
    image, so the material renders untextured. Returns the image names ([] for newer files)."""
    if tuple(bpy.data.version) >= NODE_MATERIALS_VERSION:
        return []
    shown = {node.image.name for _, node in image_nodes(None)}
    return sorted(
        {
            tex.image.name
            for tex in bpy.data.textures
            if tex.type == "IMAGE"
            and tex.image is not None
            and tex.users == 0
            and tex.image.name not in shown
        }
    )


def handle_legacy_textures(names: list[str], policy: str) -> int:
    """Apply ``materials.missing_textures`` to the images of pre-2.80 texture slots: ``fail`` raises
    ``missing_texture``; ``strip`` renders without them and returns how many (counted as stripped)."""
    if names and policy != "strip":
        raise RenderFailure(
            "missing_texture",
            f"{len(names)} texture image(s) ({', '.join(names[:5])}) are used through texture slots of a "
            "pre-2.80 .blend, which Blender 5 no longer renders (set materials.missing_textures = 'strip' to "
            "render without them)",
        )
    return len(names)


# --- 2. evaluate and guard -------------------------------------------------------------------------------------


def drop_cameras_and_lights() -> None:
    for obj in list(bpy.data.objects):
        if obj.type in DROPPED_TYPES:
            bpy.data.objects.remove(obj, do_unlink=True)


@dataclass
class Geometry:
    """What the depsgraph renders, gathered once after import (normalise over what renders, docs/design.md
    §2.1)."""

    points: np.ndarray
    """(N, 3) float64 world positions that render: vertices used by a face, point-cloud points, curve points."""
    all_points: np.ndarray
    """(M, 3) float64 every evaluated vertex and point, rendered or not (the zero-extent / non-finite checks)."""
    faces: int
    """Evaluated faces: every instance counted (what Cycles traces)."""
    unique_faces: int
    """Faces of each distinct evaluated geometry counted once, however often instanced (what memory holds)."""
    ignored: dict = field(default_factory=dict)
    """What does not render and was left out of the bounding box: ``loose_vertices`` (vertices of no face:
    points and edges of a mesh, which Cycles does not draw), ``hidden_objects`` (hidden from render or from
    camera rays)."""


def evaluated_geometry() -> Geometry:
    """Everything the depsgraph renders, with its world positions and face counts.

    Walks the depsgraph's object instances, so modifiers, armatures, shape keys and instancing (collection
    instances, geometry nodes) are counted as they render, each instance with its own world matrix. Mesh
    vertices that belong to no face are left out of ``points`` (a glTF POINTS primitive imports as loose
    vertices that never render, docs/design.md §2.1); point clouds and hair curves are kept, Cycles renders
    them.
    """
    depsgraph = bpy.context.evaluated_depsgraph_get()
    rendered: list[np.ndarray] = []
    every: list[np.ndarray] = []
    faces = 0
    loose = hidden = 0
    cache: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for inst in depsgraph.object_instances:
        obj = inst.object
        if obj.type not in GEOMETRY_TYPES and obj.type not in POINT_TYPES:
            continue
        original = obj.original
        if original.hide_render or not original.visible_camera:
            hidden += 1
            continue
        key = geometry_key(inst)
        if key not in cache:
            cache[key] = local_geometry(obj)
            loose += len(cache[key][0]) - len(cache[key][1])
        local_all, local_used, n_faces = cache[key]
        m = np.array(inst.matrix_world, dtype=np.float64)
        rendered.append(local_used @ m[:3, :3].T + m[:3, 3])
        every.append(local_all @ m[:3, :3].T + m[:3, 3])
        faces += n_faces
    unique_faces = sum(n for _, _, n in cache.values())
    ignored = {"loose_vertices": int(loose), "hidden_objects": int(hidden)}
    return Geometry(stack(rendered), stack(every), int(faces), int(unique_faces), ignored)


def geometry_key(inst) -> str:
    """Which evaluated geometries are the same in memory: instances of one data block, and objects that share
    one mesh without modifiers (linked duplicates), are one geometry (``limits.max_faces``
    counts what memory holds, docs/design.md §2.1)."""
    obj = inst.object
    data = obj.data.name if obj.data else ""
    if inst.is_instance:
        return f"instance\0{obj.name}\0{data}"
    if obj.type == "MESH" and not obj.original.modifiers and obj.original.data.shape_keys is None:
        return f"mesh\0{obj.original.data.name}"
    return f"object\0{obj.name}"


def local_geometry(obj) -> tuple[np.ndarray, np.ndarray, int]:
    """(all positions, rendered positions, faces) of one evaluated object in its local frame, float64."""
    if obj.type in POINT_TYPES:
        pos = obj.data.attributes["position"]
        local = np.empty(len(pos.data) * 3, dtype=np.float32)
        pos.data.foreach_get("vector", local)
        local = local.reshape(-1, 3).astype(np.float64)
        return local, local, 0
    mesh = obj.to_mesh()
    try:
        local = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", local)
        local = local.reshape(-1, 3).astype(np.float64)
        corners = np.empty(len(mesh.loops), dtype=np.int32)
        mesh.loops.foreach_get("vertex_index", corners)
        used = local[np.unique(corners)] if len(mesh.polygons) else local[:0]
        return local, used, len(mesh.polygons)
    finally:
        obj.to_mesh_clear()


def stack(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, 3))


def check_geometry(geo: Geometry, max_faces: int, max_evaluated_faces: int) -> None:
    """Raise :class:`RenderFailure` (no_mesh, non_finite, zero_extent, too_many_faces) for unusable geometry."""
    if len(geo.all_points) == 0:
        raise RenderFailure("no_mesh", "the file holds no mesh geometry")
    if not np.all(np.isfinite(geo.all_points)):
        bad = int((~np.isfinite(geo.all_points)).any(axis=1).sum())
        raise RenderFailure("non_finite", f"{bad} of {len(geo.all_points)} vertices are NaN or infinite")
    # Checked over every vertex first: importers may drop the degenerate faces of a collapsed mesh, which must
    # still read as zero_extent, not as no_mesh.
    check_extent(geo.all_points)
    if len(geo.points) == 0:
        raise RenderFailure(
            "no_mesh",
            f"nothing renders: {len(geo.all_points)} vertices but no faces, point clouds or curves "
            f"({geo.ignored['loose_vertices']} loose vertices, {geo.ignored['hidden_objects']} hidden objects)",
        )
    check_extent(geo.points)
    if geo.unique_faces > max_faces:
        raise RenderFailure(
            "too_many_faces",
            f"{geo.unique_faces} unique faces exceed limits.max_faces={max_faces} (memory guard)",
        )
    if geo.faces > max_evaluated_faces:
        raise RenderFailure(
            "too_many_faces",
            f"{geo.faces} evaluated faces (instances counted) exceed "
            f"limits.max_evaluated_faces={max_evaluated_faces}",
        )


def check_extent(points: np.ndarray) -> None:
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float((hi - lo).max())
    if extent <= ZERO_EXTENT_REL * max(1.0, float(np.abs(points).max())):
        raise RenderFailure("zero_extent", f"bounding box extent {extent:.3g} is zero")


# --- 3. normalise ----------------------------------------------------------------------------------------------


def normalize(points: np.ndarray) -> dict:
    """Fit the bbox into [-0.5, 0.5]^3, longest side 1, centre at the origin (docs/design.md §3): x' = s x +
    offset.

    The transform goes on a new empty that every root object is parented to, so hierarchies, armatures and
    animations keep working under it.
    """
    lo, hi = points.min(axis=0), points.max(axis=0)
    scale = 1.0 / float((hi - lo).max())
    offset = -scale * (lo + hi) / 2.0
    empty = bpy.data.objects.new(NORMALIZE_EMPTY, None)
    bpy.context.scene.collection.objects.link(empty)
    empty.matrix_world = Matrix.Translation(offset.tolist()) @ Matrix.Scale(scale, 4)
    for obj in bpy.context.scene.objects:
        if obj.parent is None and obj is not empty:
            world = obj.matrix_world.copy()
            obj.parent = empty
            # With an identity parent inverse, child world = parent world @ child basis.
            obj.matrix_parent_inverse = Matrix.Identity(4)
            obj.matrix_basis = world
    bpy.context.view_layer.update()
    return {"scale": scale, "offset": [float(x) for x in offset]}


def scene_stats(geo: Geometry, missing_textures: int, stripped_textures: int, vertex_colors: dict) -> dict:
    """meta.json ``stats``: counts of what was rendered and what was repaired or ignored (docs/design.md
    §2.1)."""
    return {
        "faces": geo.faces,
        "unique_faces": geo.unique_faces,
        "vertices": int(len(geo.points)),
        "ignored": geo.ignored,
        "materials": len(bpy.data.materials),
        "animations": len(bpy.data.actions),
        "missing_textures": missing_textures,
        "stripped_textures": stripped_textures,
        "vertex_colors": vertex_colors,
    }


# --- 3b. materials that would render wrong (docs/render_failures.md) -------------------------------------------


def missing_images() -> set:
    """Images the object refers to whose pixels cannot be loaded (a missing or broken file)."""
    missing = set()
    for img in bpy.data.images:
        if img.source not in {"FILE", "SEQUENCE", "TILED"}:
            continue
        # Reading .size loads the image buffer; a file that cannot be read reports 0 x 0.
        if tuple(img.size) == (0, 0):
            missing.add(img.name)
    return missing


def image_nodes(missing: set | None) -> list[tuple]:
    """(node tree, node) of every image-texture node, in materials and node groups, showing an image of
    ``missing`` (None: any image)."""
    trees = [m.node_tree for m in bpy.data.materials if m.node_tree is not None]
    trees += [g for g in bpy.data.node_groups if g.bl_idname == "ShaderNodeTree"]
    return [
        (tree, node)
        for tree in trees
        for node in tree.nodes
        if node.bl_idname == "ShaderNodeTexImage"
        and node.image is not None
        and (missing is None or node.image.name in missing)
    ]


def handle_missing_textures(policy: str) -> tuple[int, int]:
    """Apply ``materials.missing_textures`` (fail | strip); return (missing images, image nodes removed).

    Cycles renders an unloadable image as magenta (1, 0, 1): such views must never reach shards as ``ok``.
    ``strip`` removes the image nodes, so whatever socket they fed falls back to its own value (the material's
    base colour). Raises :class:`RenderFailure` ``missing_texture`` under ``fail`` when a node shows one.
    """
    missing = missing_images()
    nodes = image_nodes(missing)
    if not nodes:
        return len(missing), 0
    names = sorted({node.image.name for _, node in nodes})
    if policy != "strip":
        raise RenderFailure(
            "missing_texture",
            f"{len(names)} texture image(s) cannot be loaded ({', '.join(names[:5])}); they would render "
            "magenta (set materials.missing_textures = 'strip' to render the base colour instead)",
        )
    for tree, node in nodes:
        tree.nodes.remove(node)
    return len(missing), len(nodes)


VERTEX_COLOR_NODES = {"ShaderNodeVertexColor", "ShaderNodeAttribute"}


def reads_color_attribute(material) -> bool:
    """True when the material's node tree reads any attribute (a linked Color Attribute or Attribute node)."""
    tree = material.node_tree
    if tree is None:
        return False
    return any(
        node.bl_idname in VERTEX_COLOR_NODES and any(out.is_linked for out in node.outputs)
        for node in tree.nodes
    )


def apply_vertex_colors(enabled: bool) -> dict:
    """Give material-less meshes that carry a colour attribute a material that renders it (docs/design.md
    §2.1).

    Importers already store the attribute in Blender's linear space (PLY bytes and OBJ ``v x y z r g b`` read
    as sRGB, glTF COLOR_0 as linear), so the Color Attribute node renders it as the file means it. A mesh
    whose own material ignores the attribute keeps that material: its author chose the look, and the attribute
    may be data (a mask, baked AO). Returns the counts recorded as meta.json ``stats.vertex_colors``:
    ``applied`` (material added), ``used_by_material``, ``ignored_by_material`` (meshes with an attribute).
    """
    counts = {"applied": 0, "used_by_material": 0, "ignored_by_material": 0}
    made: dict[str, object] = {}
    for mesh in {o.data for o in bpy.data.objects if o.type == "MESH" and o.data is not None}:
        attrs = mesh.color_attributes
        if len(attrs) == 0:
            continue
        materials = [m for m in mesh.materials if m is not None]
        if materials:
            used = any(reads_color_attribute(m) for m in materials)
            counts["used_by_material" if used else "ignored_by_material"] += 1
            continue
        if not enabled:
            counts["ignored_by_material"] += 1
            continue
        index = attrs.render_color_index if 0 <= attrs.render_color_index < len(attrs) else 0
        name = attrs[index].name
        if name not in made:
            made[name] = vertex_color_material(name)
        mesh.materials.clear()
        mesh.materials.append(made[name])
        counts["applied"] += 1
    return counts


def vertex_color_material(attribute: str):
    """A Principled BSDF whose base colour is the colour attribute ``attribute``."""
    mat = bpy.data.materials.new(f"mvforge_vertex_color_{attribute}")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = attribute
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


# --- 5-6. world and engine -------------------------------------------------------------------------------------


def setup_world(hdri: dict, map_resolution: int = 0) -> dict:
    """Environment light from an HDRI, rotated about Z, scaled by strength; hidden from the camera unless asked.

    ``map_resolution``: side of the world's importance map (MANUAL sampling), 0 = Cycles' AUTOMATIC size.
    Cycles builds the map at an object's first render call and persistent data keeps it for the other views;
    a coarser map is cheaper to build and still unbiased, but noisier: too coarse a map costs more noise than
    its build time saves (docs/bench/render_speed.md).

    ``hdri["exposure"] == "normalized"`` (``lighting.exposure``) sets the Background strength to strength x
    ``exposure_target`` / the map's mean radiance; ``raw`` uses the strength as drawn. Returns what meta.json ``hdri`` adds: ``mean_radiance`` (solid-angle weighted
    luminance, ``mvforge.render.exposure.mean_radiance``) and ``strength_applied`` (the Background strength).
    Raises RuntimeError for an unreadable or black map under ``normalized`` (the pool is the run's input, so
    that is a crash of the run, not the object's failure).
    """
    world = bpy.data.worlds.new("mvforge_hdri")
    bpy.context.scene.world = world
    world.cycles.sampling_method = "MANUAL" if map_resolution > 0 else "AUTOMATIC"
    if map_resolution > 0:
        world.cycles.sample_map_resolution = int(map_resolution)
    world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    coords = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Rotation"].default_value = (0.0, 0.0, math.radians(float(hdri["rotation_deg"])))
    env = nodes.new("ShaderNodeTexEnvironment")
    try:
        env.image = bpy.data.images.load(str(hdri["path"]), check_existing=True)
    except RuntimeError as e:
        # The HDRI pool is the user's input, checked by the planner; a file vanishing now is a crash, not the
        # object's fault, so it must not become a per-object failure record.
        raise RuntimeError(f"cannot load HDRI {hdri['path']}: {e}") from e
    radiance = hdri_mean_radiance(env.image, str(hdri["path"]))
    strength = float(hdri["strength"])
    if hdri["exposure"] == "normalized":
        try:
            strength = exposure.normalized_strength(strength, float(hdri["exposure_target"]), radiance)
        except ValueError as e:
            raise RuntimeError(f"HDRI {hdri['path']}: {e}; remove it from --hdri-dir") from e
    background = nodes.new("ShaderNodeBackground")
    background.inputs["Strength"].default_value = strength
    out = nodes.new("ShaderNodeOutputWorld")
    links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
    links.new(mapping.outputs["Vector"], env.inputs["Vector"])
    links.new(env.outputs["Color"], background.inputs["Color"])
    links.new(background.outputs["Background"], out.inputs["Surface"])
    world.cycles_visibility.camera = bool(hdri["visible_to_camera"])
    return {"mean_radiance": radiance, "strength_applied": strength}


# Mean radiance per map file, keyed by (path, size, mtime): one process renders a batch of objects
# (limits.objects_per_process), which often share a map; reading the pixels costs ~40 ms for a bundled 1024x512
# map on these cores, ~16x that for a 4k one.
_RADIANCE_CACHE: dict[tuple, float] = {}


def hdri_mean_radiance(image, path: str) -> float:
    """Solid-angle weighted mean luminance of a loaded environment image (``exposure.mean_radiance``).

    Raises RuntimeError for a map without pixels or with non-finite values.
    """
    try:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
    except OSError:
        key = (path, None, None)
    if key in _RADIANCE_CACHE:
        return _RADIANCE_CACHE[key]
    w, h = image.size
    channels = image.channels
    if w * h == 0 or channels < 3:
        raise RuntimeError(f"HDRI {path} has no RGB pixels ({w}x{h}, {channels} channels)")
    pixels = np.empty(w * h * channels, dtype=np.float32)
    # foreach_get copies the float buffer in one call (a Python loop over pixels would take minutes).
    image.pixels.foreach_get(pixels)
    try:
        radiance = exposure.mean_radiance(pixels.reshape(h, w, channels))
    except ValueError as e:
        raise RuntimeError(f"HDRI {path}: {e}") from e
    _RADIANCE_CACHE[key] = radiance
    return radiance


# Angular diameter of each sun lamp: the real sun's 0.526° (also Blender's default). A few tenths of a degree
# keeps shadow edges from aliasing while adding almost no sampling noise.
SUN_ANGLE_DEG = 0.526


def setup_lamps(lamps: dict) -> None:
    """The sun-lamp rig of ``lighting.kind = "lamps"`` (objaverse-xl's studio light): one SUN light per
    planned lamp, shining from (azimuth_deg, elevation_deg) in the orbit convention of docs/design.md §3
    towards the origin with ``energy`` W/m², and a uniform grey world of radiance ``ambient`` that the camera
    does not see.

    The world is never light-sampled (sampling NONE): a constant world is found as well by the BSDF's own
    samples, and building an importance map of it would cost like an HDRI's.
    """
    world = bpy.data.worlds.new("mvforge_ambient")
    bpy.context.scene.world = world
    world.cycles.sampling_method = "NONE"
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background") or world.node_tree.nodes.new("ShaderNodeBackground")
    level = float(lamps["ambient"])
    background.inputs["Color"].default_value = (level, level, level, 1.0)
    background.inputs["Strength"].default_value = 1.0
    world.cycles_visibility.camera = False
    for lamp in lamps["lights"]:
        light = bpy.data.lights.new(f"mvforge_{lamp['name']}", type="SUN")
        light.energy = float(lamp["energy"])
        light.angle = math.radians(SUN_ANGLE_DEG)
        obj = bpy.data.objects.new(light.name, light)
        # A sun shines along its local -Z: point -Z from the lamp's direction back to the origin.
        towards = Vector(orbit_position(float(lamp["elevation_deg"]), float(lamp["azimuth_deg"]), 1.0))
        obj.rotation_euler = (-towards).to_track_quat("-Z", "Y").to_euler()
        bpy.context.scene.collection.objects.link(obj)


def setup_cycles(cfg: dict, seed: int, resolution: int) -> str:
    """Cycles with every setting explicit (docs/design.md §6): a render never depends on Blender's
    defaults."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    device = pick_device(cfg["device"])
    cycles.device = "GPU" if device != "CPU" else "CPU"
    cycles.samples = int(cfg["samples"])
    threshold = float(cfg["adaptive_threshold"])
    cycles.use_adaptive_sampling = threshold > 0
    if threshold > 0:
        cycles.adaptive_threshold = threshold
        cycles.adaptive_min_samples = int(cfg["adaptive_min_samples"])
    # Explicit, though Blender's default: the light tree changes the lamp rig's noise markedly per object
    # (docs/bench/render_speed.md), so a changed default would change the data.
    cycles.use_light_tree = True
    cycles.use_denoising = bool(cfg["denoise"])
    # The denoiser's settings are explicit too (recorded in meta.json ``cycles``): OpenImageDenoise, which runs
    # on any CPU, guided by albedo and normal so texture detail is kept (docs/bench/render_speed.md
    # compares SSIM on textures).
    cycles.denoiser = "OPENIMAGEDENOISE"
    cycles.denoising_input_passes = "RGB_ALBEDO_NORMAL"
    cycles.denoising_prefilter = cfg["denoise_prefilter"]
    cycles.denoising_quality = cfg["denoise_quality"]
    cycles.denoising_use_gpu = False
    cycles.pixel_filter_type = "BLACKMAN_HARRIS"
    cycles.filter_width = float(cfg["filter_width"])
    cycles.max_bounces = int(cfg["max_bounces"])
    cycles.diffuse_bounces = int(cfg["diffuse_bounces"])
    cycles.glossy_bounces = int(cfg["glossy_bounces"])
    cycles.transmission_bounces = int(cfg["transmission_bounces"])
    cycles.transparent_max_bounces = int(cfg["transparent_bounces"])
    # The seed is Cycles' sampling pattern: fixed per object so a re-render is reproducible (resume, §8).
    cycles.seed = seed % (2**31)
    cycles.use_animated_seed = False
    scene.render.threads_mode = "FIXED"
    scene.render.threads = max(1, int(cfg["threads"]))
    # Keep the synced scene (BVH, textures) between the views: only the camera moves (docs/design.md §8
    # overhead).
    scene.render.use_persistent_data = True

    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.film_transparent = True
    scene.render.use_compositing = False
    scene.render.use_sequencer = False
    settings = scene.render.image_settings
    settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    settings.color_mode = "RGBA"
    settings.color_depth = "8"
    settings.compression = 15
    # No metadata stamps (date, render time, ...): the same job must give byte-identical PNGs (resume, §8).
    for attr in dir(scene.render):
        if attr.startswith("use_stamp"):
            setattr(scene.render, attr, False)
    # Blender 5 defaults to AgX; the data set is plain sRGB "Standard" (docs/design.md §2.1).
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.view_transform = cfg["view_transform"]
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.view_settings.use_curve_mapping = False
    return device


def cycles_record() -> dict:
    """The sampling settings that decide the noise of a view, read back from the scene (meta.json ``cycles``)."""
    scene = bpy.context.scene
    cycles, world = scene.cycles, scene.world
    return {
        "samples": int(cycles.samples),
        "adaptive_threshold": float(cycles.adaptive_threshold) if cycles.use_adaptive_sampling else 0.0,
        # What Cycles uses (its automatic rule resolved), so a reader need not know the rule.
        "adaptive_min_samples": (
            adaptive_min_samples_used(float(cycles.adaptive_threshold), int(cycles.adaptive_min_samples))
            if cycles.use_adaptive_sampling
            else None
        ),
        "light_tree": bool(cycles.use_light_tree),
        "denoiser": str(cycles.denoiser) if cycles.use_denoising else None,
        "denoising_input_passes": str(cycles.denoising_input_passes) if cycles.use_denoising else None,
        "denoising_prefilter": str(cycles.denoising_prefilter) if cycles.use_denoising else None,
        "denoising_quality": str(cycles.denoising_quality) if cycles.use_denoising else None,
        "world_sampling": str(world.cycles.sampling_method) if world is not None else None,
        "world_map_resolution": (
            int(world.cycles.sample_map_resolution)
            if world is not None and world.cycles.sampling_method == "MANUAL"
            else None
        ),
        "filter_width": round(float(cycles.filter_width), 4),
        "max_bounces": int(cycles.max_bounces),
        "persistent_data": bool(scene.render.use_persistent_data),
    }


def pick_device(kind: str) -> str:
    """The Cycles device: the first GPU backend of OPTIX > CUDA > HIP > METAL that has a device, else CPU."""
    if kind == "cpu":
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for backend in GPU_BACKENDS:
        try:
            prefs.compute_device_type = backend
        except TypeError:  # backend not compiled into this build
            continue
        prefs.get_devices()
        devices = [d for d in prefs.devices if d.type == backend]
        if devices:
            for d in prefs.devices:
                d.use = d.type == backend
            return backend
    if kind == "gpu":
        raise RuntimeError("cycles.device = gpu but no OPTIX/CUDA/HIP/METAL device is available")
    prefs.compute_device_type = "NONE"
    return "CPU"


def setup_passes(passes: dict, staging: Path, depth_max: float):
    """Compositor File Output for the enabled passes (Blender 5 node-group compositor); None when none is on.

    Files land as ``staging/NNN.<pass>.png`` (the node writes ``directory/file_name + item name``).
    """
    wanted = [name for name in ("depth", "normal", "albedo") if passes.get(name)]
    if not wanted:
        return None
    scene = bpy.context.scene
    layer = scene.view_layers[0]
    layer.use_pass_z = "depth" in wanted
    layer.use_pass_normal = "normal" in wanted
    layer.use_pass_diffuse_color = "albedo" in wanted
    tree = bpy.data.node_groups.new("mvforge_passes", "CompositorNodeTree")
    scene.compositing_node_group = tree
    scene.render.use_compositing = True
    nodes, links = tree.nodes, tree.links
    layers = nodes.new("CompositorNodeRLayers")
    # The group output carries the plain image, so the compositor leaves the Render Result (our RGBA) untouched.
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    group_out = nodes.new("NodeGroupOutput")
    links.new(layers.outputs["Image"], group_out.inputs[0])
    out = nodes.new("CompositorNodeOutputFile")
    out.directory = str(staging) + os.sep
    set_png(out.format, "RGB", "8")
    for name in wanted:
        item = out.file_output_items.new("FLOAT" if name == "depth" else "RGBA", name)
        item.override_node_format = True
        set_png(item.format, "BW" if name == "depth" else "RGB", "16" if name == "depth" else "8")
        if name == "normal":
            # Normals are data, not colour: no sRGB encoding, n * 0.5 + 0.5 written as is.
            item.format.color_management = "OVERRIDE"
            item.format.view_settings.view_transform = "Raw"
    if "depth" in wanted:
        scaled = math_node(nodes, "DIVIDE", layers.outputs["Depth"], depth_max, clamp=True, links=links)
        # Background (and edge pixels whose depth sample missed) is 1e10 in Cycles: mark it 0, not depth_max.
        hit = math_node(nodes, "LESS_THAN", layers.outputs["Depth"], depth_max, links=links)
        depth = math_node(nodes, "MULTIPLY", scaled.outputs[0], None, links=links)
        links.new(hit.outputs[0], depth.inputs[1])
        links.new(depth.outputs[0], out.inputs["depth"])
    if "normal" in wanted:
        encode = nodes.new("ShaderNodeVectorMath")
        encode.operation = "MULTIPLY_ADD"
        encode.inputs[1].default_value = (0.5, 0.5, 0.5)
        encode.inputs[2].default_value = (0.5, 0.5, 0.5)
        links.new(layers.outputs["Normal"], encode.inputs[0])
        links.new(encode.outputs[0], out.inputs["normal"])
    if "albedo" in wanted:
        links.new(layers.outputs["Diffuse Color"], out.inputs["albedo"])
    return out


def set_png(fmt, color_mode: str, depth: str) -> None:
    fmt.media_type = "IMAGE"
    fmt.file_format = "PNG"
    fmt.color_mode = color_mode
    fmt.color_depth = depth


def math_node(nodes, operation: str, a, b: float | None, *, links, clamp: bool = False):
    node = nodes.new("ShaderNodeMath")
    node.operation = operation
    node.use_clamp = clamp
    links.new(a, node.inputs[0])
    if b is not None:
        node.inputs[1].default_value = b
    return node


def passes_record(passes: dict, depth_max: float) -> dict:
    out: dict = {}
    if passes.get("depth"):
        out["depth"] = {
            "file": "NNN.depth.png",
            "encoding": "png16",
            "depth_max": depth_max,
            "meaning": "camera-axis depth = value / 65535 * depth_max; 0 = background",
        }
    if passes.get("normal"):
        out["normal"] = {"file": "NNN.normal.png", "encoding": "world normal = rgb / 255 * 2 - 1"}
    if passes.get("albedo"):
        out["albedo"] = {"file": "NNN.albedo.png", "encoding": "diffuse colour, sRGB"}
    return out


# --- 7. camera and views ---------------------------------------------------------------------------------------


def add_camera():
    data = bpy.data.cameras.new("mvforge_camera")
    data.sensor_fit = "AUTO"  # the fov applies to the larger side; renders are square (cameras.intrinsics)
    data.lens_unit = "FOV"
    data.shift_x = data.shift_y = 0.0
    data.clip_start = 1e-3
    data.clip_end = 1e3
    camera = bpy.data.objects.new("mvforge_camera", data)
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return camera


def view_from_dict(v: dict) -> View:
    return View(
        index=int(v["index"]),
        orbit=int(v["orbit"]),
        elevation_deg=float(v["elevation_deg"]),
        azimuth_deg=float(v["azimuth_deg"]),
        fov_deg=float(v["fov_deg"]),
        distance=float(v["distance"]),
    )


def save_view(path: Path, check_alpha: bool = True) -> bool:
    """Write the Render Result as RGBA PNG (atomically); True when any pixel has non-zero alpha (always False
    when ``check_alpha`` is off)."""
    result = bpy.data.images["Render Result"]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.png")
    result.save_render(filepath=str(tmp))
    # Cycles stamps its timings into text chunks even with every use_stamp_* off; without them the same job
    # gives byte-identical files (resume must reproduce an uninterrupted run, docs/design.md §8).
    data = strip_png_text(tmp.read_bytes())
    tmp.unlink()
    atomic_write_bytes(path, data)
    return check_alpha and png_has_alpha(path)


def strip_png_text(data: bytes) -> bytes:
    """The PNG without its text and time chunks (pixel data untouched, never re-encoded)."""
    if data[:8] != PNG_SIGNATURE:
        raise RuntimeError("Blender wrote a file that is not a PNG")
    out, pos = [data[:8]], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 12 + length  # length, type, data, crc
        if data[pos + 4 : pos + 8] not in PNG_DROPPED_CHUNKS:
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


def png_has_alpha(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        lo, hi = img.getchannel("A").getextrema()
    return hi > 0
