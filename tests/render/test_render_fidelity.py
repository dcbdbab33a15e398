"""Render fidelity (docs/render_failures.md): no silently wrong ``ok`` objects, and the paper's framing, in real
Blender renders.

Each kind of silently wrong render has one input (a real file from tests/data/wrong-ok, or one generated here)
and ends in its outcome: the record, the reason code or flag, and pixels that show it. Renders are tiny (48-64 px,
4 samples, 1-2 views) and shared per module.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvforge.cameras import OrbitSampling
from mvforge.formats import renders as layout
from mvforge.render import worker
from mvforge.render.config import CyclesConfig, LimitsConfig, PassesConfig, RenderConfig
from mvforge.render.plan import SourceObject, hdri_pool, plan_job

DATA = Path(__file__).resolve().parents[1] / "data" / "wrong-ok"

# Cameras at elevation 0 on a fixed azimuth: the tests know which face each view sees.
FLAT = OrbitSampling(
    views=2, elevation_min_deg=0.0, elevation_max_deg=0.0, fov_min_deg=30.0, fov_max_deg=40.0
)
SMALL = RenderConfig(resolution=64, cameras=FLAT, cycles=CyclesConfig(samples=4, threads=1))
ALBEDO = dataclasses.replace(SMALL, resolution=48, passes=PassesConfig(albedo=True))
STRIP = {"missing_textures": "strip", "vertex_colors": True}

# The vertex colour every generated input carries, as the sRGB bytes a correct render shows.
SRGB = np.array([200, 80, 40])
# Albedo pixels may differ from the source by this much (8-bit rounding of the byte attribute, antialiasing).
COLOR_TOL = 6


WORKER_TIMEOUT_S = 180


# --- the worker, as tests/render/test_blender_scene.py runs it (--import-mode=importlib: no sibling imports) --


def run_worker(tmp: Path, name: str, path: Path, cfg: RenderConfig, **overrides):
    """Plan a job for ``path`` (uid ``name``), override job keys, run the real worker: (exit, result, staging)."""
    obj = SourceObject(uid=name, kind="local", ext=path.suffix.lstrip(".").lower(), path=str(path))
    job = plan_job(obj, cfg, hdri_pool(None)) | overrides
    job_path = tmp / f"{name}.job.json"
    job_path.write_text(json.dumps(job))
    staging = tmp / f"{name}.staging"
    cmd = [sys.executable, "-m", "mvforge.render.worker", str(job_path), str(staging)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    result_path = staging / worker.RESULT
    assert result_path.is_file(), f"{name}: no result.json (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(result_path.read_text()), staging


def rgba(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA")).astype(np.float64)


def alpha_bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img[..., 3] > 128)
    return xs.min(), ys.min(), xs.max(), ys.max()


def cube(center, half: float) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return np.asarray(center, dtype=float) + half * signs, quads


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def magenta_pixels(img: np.ndarray) -> int:
    """Opaque pixels near (255, 0, 255): Cycles' colour for an image it cannot load."""
    r, g, b, a = np.moveaxis(img, -1, 0)
    return int(((a > 128) & (r > 200) & (g < 60) & (b > 200)).sum())


# --- generated inputs ------------------------------------------------------------------------------------------


def cube_triangles() -> tuple[np.ndarray, np.ndarray]:
    verts, quads = cube([0, 0, 0], 0.5)
    tris = [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]
    return verts, np.array(tris)


def write_color_ply(path: Path) -> Path:
    """A binary PLY cube whose 8 vertices carry the uchar colour ``SRGB`` (PLY colours are sRGB bytes)."""
    verts, tris = cube_triangles()
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(tris)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = b"".join(struct.pack("<3f3B", *v, *SRGB) for v in verts)
    body += b"".join(struct.pack("<B3i", 3, *t) for t in tris)
    path.write_bytes(header.encode() + body)
    return path


def write_color_obj(path: Path) -> Path:
    """An OBJ cube with ``v x y z r g b`` (sRGB in 0-1, as MeshLab writes it) and no material."""
    verts, tris = cube_triangles()
    rgb = " ".join(f"{c / 255:.6f}" for c in SRGB)
    lines = [f"v {x} {z} {-y} {rgb}" for x, y, z in verts]  # OBJ is Y-up
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in tris]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_gltf(
    path: Path, positions: np.ndarray, indices: np.ndarray | None, colors: np.ndarray | None
) -> Path:
    """A self-contained glTF with one material-less primitive (TRIANGLES when indices are given, else POINTS)."""
    pos = np.asarray(positions, dtype="<f4")
    chunks = [pos.tobytes()]
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": pos.nbytes}]
    accessors = [
        {
            "bufferView": 0,
            "componentType": 5126,
            "count": len(pos),
            "type": "VEC3",
            "min": pos.min(axis=0).tolist(),
            "max": pos.max(axis=0).tolist(),
        }
    ]
    attributes = {"POSITION": 0}
    if colors is not None:
        col = np.asarray(colors, dtype="<f4")
        views.append({"buffer": 0, "byteOffset": pos.nbytes, "byteLength": col.nbytes})
        accessors.append({"bufferView": 1, "componentType": 5126, "count": len(col), "type": "VEC3"})
        attributes["COLOR_0"] = 1
        chunks.append(col.tobytes())
    primitive: dict = {"attributes": attributes, "mode": 0}
    if indices is not None:
        idx = np.asarray(indices, dtype="<u4").ravel()
        views.append({"buffer": 0, "byteOffset": sum(map(len, chunks)), "byteLength": idx.nbytes})
        accessors.append(
            {"bufferView": len(views) - 1, "componentType": 5125, "count": len(idx), "type": "SCALAR"}
        )
        primitive.update(indices=len(accessors) - 1, mode=4)
        chunks.append(idx.tobytes())
    data = b"".join(chunks)
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [primitive]}],
        "buffers": [
            {
                "byteLength": len(data),
                "uri": "data:application/octet-stream;base64," + base64.b64encode(data).decode(),
            }
        ],
        "bufferViews": views,
        "accessors": accessors,
    }
    path.write_text(json.dumps(doc))
    return path


def write_color_obj_with_material(path: Path) -> Path:
    """The OBJ cube with vertex colours and its own blue material, which ignores them."""
    path.with_suffix(".mtl").write_text("newmtl blue\nKd 0 0 1\n")
    text = write_color_obj(path).read_text()
    path.write_text(f"mtllib {path.with_suffix('.mtl').name}\nusemtl blue\n{text}")
    return path


def write_color_gltf(path: Path) -> Path:
    """A glTF cube with COLOR_0 (linear, per the glTF spec) equal to ``SRGB`` decoded, and no material."""
    verts, tris = cube_triangles()
    # glTF is Y-up: the importer maps file (x, y, z) to world (x, -z, y).
    file_verts = verts[:, [0, 2, 1]] * [1, 1, -1]
    return write_gltf(path, file_verts, tris, np.tile(srgb_to_linear(SRGB), (len(verts), 1)))


def write_square_obj(path: Path) -> Path:
    """A unit square on the centre plane y = 0 (facing -Y, the azimuth-0 camera), as two triangles."""
    world = [(-0.5, 0, -0.5), (0.5, 0, -0.5), (0.5, 0, 0.5), (-0.5, 0, 0.5)]
    lines = [f"v {x} {z} {-y}" for x, y, z in world] + ["f 1 2 3", "f 1 3 4"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fidelity")


@pytest.fixture(scope="module")
def missing_texture_runs(tmp):
    path = DATA / "missing_texture" / "BoxTextured.gltf"
    failed = run_worker(tmp, "box-fail", path, SMALL)
    stripped = run_worker(tmp, "box-strip", path, SMALL, materials=STRIP)
    return failed, stripped


@pytest.fixture(scope="module")
def color_runs(tmp):
    inputs = {
        "ply": write_color_ply(tmp / "color.ply"),
        "obj": write_color_obj(tmp / "color.obj"),
        "gltf": write_color_gltf(tmp / "color.gltf"),
        "obj-material": write_color_obj_with_material(tmp / "color-material.obj"),
        "real-ply": DATA / "vertex_colors_ply" / "reference.ply",
    }
    return {name: run_worker(tmp, f"color-{name}", path, ALBEDO) for name, path in inputs.items()}


# --- 1. missing textures ---------------------------------------------------------------------------------------


def test_missing_texture_fails_by_default_and_strip_renders_no_magenta(missing_texture_runs):
    (code, result, _), (code2, result2, staging) = missing_texture_runs
    assert code == worker.EXIT_FAILED and result["reason"] == "missing_texture", result
    assert "CesiumLogoFlat.png" in result["message"]
    assert code2 == worker.EXIT_OK, result2
    assert result2["stats"]["missing_textures"] == 1 and result2["stats"]["stripped_textures"] == 1
    for k in range(FLAT.views):
        img = rgba(staging / layout.view_name(k))
        assert (img[..., 3] > 128).mean() > 0.05
        assert magenta_pixels(img) == 0


# --- 2. vertex colours -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ply", "obj", "gltf"])
def test_vertex_colors_render_in_their_colour_space(color_runs, fmt):
    code, result, staging = color_runs[fmt]
    assert code == worker.EXIT_OK, result
    vc = result["stats"]["vertex_colors"]
    assert vc["applied"] + vc["used_by_material"] == 1 and vc["ignored_by_material"] == 0, vc
    for k in range(FLAT.views):
        alpha = rgba(staging / layout.view_name(k))[..., 3]
        with Image.open(staging / layout.view_name(k, "albedo")) as im:
            albedo = np.asarray(im.convert("RGB")).astype(np.float64)
        inside = albedo[alpha == 255]
        assert len(inside) > 100
        # Every fully covered pixel shows the source colour (a grey or a colour-space slip is off by > 40).
        assert np.abs(np.median(inside, axis=0) - SRGB).max() <= COLOR_TOL, (fmt, np.median(inside, axis=0))
        assert np.mean(np.abs(inside - SRGB).max(axis=1) <= COLOR_TOL) > 0.95


def test_a_material_that_ignores_vertex_colors_is_kept_and_recorded(color_runs):
    code, result, staging = color_runs["obj-material"]
    assert code == worker.EXIT_OK, result
    assert result["stats"]["vertex_colors"] == {"applied": 0, "used_by_material": 0, "ignored_by_material": 1}
    alpha = rgba(staging / layout.view_name(0))[..., 3]
    with Image.open(staging / layout.view_name(0, "albedo")) as im:
        albedo = np.asarray(im.convert("RGB")).astype(np.float64)[alpha == 255]
    assert np.abs(np.median(albedo, axis=0) - [0, 0, 255]).max() <= COLOR_TOL  # the author's blue, not SRGB


def test_real_vertex_coloured_scan_is_not_grey(color_runs):
    code, result, staging = color_runs["real-ply"]
    assert code == worker.EXIT_OK, result
    assert result["stats"]["vertex_colors"]["applied"] == 1
    # reference.ply: 766 of 845 vertices are sRGB (192, 192, 192), the rest red or green patches. Without a
    # material reading them it renders Blender's default 0.8 grey (sRGB 231). The scan is curved: the diffuse
    # albedo pass is weighted by the Principled BSDF's specular layer at grazing angles, hence a wider margin.
    coloured, grey = 0, []
    for k in range(FLAT.views):
        alpha = rgba(staging / layout.view_name(k))[..., 3]
        with Image.open(staging / layout.view_name(k, "albedo")) as im:
            albedo = np.asarray(im.convert("RGB")).astype(np.float64)[alpha == 255]
        grey.append(np.median(albedo, axis=0))
        coloured += int(((albedo.max(axis=1) - albedo.min(axis=1)) > 60).sum())
    assert np.abs(np.array(grey) - 192).max() <= 2 * COLOR_TOL, grey
    assert coloured >= 1


# --- 3. bounding box over what renders -------------------------------------------------------------------------


def test_mesh_plus_points_is_normalised_over_the_mesh(tmp):
    path = DATA / "mesh_and_points" / "sphere_two_materials_mesh_and_point_cloud.gltf"
    code, result, staging = run_worker(tmp, "mesh-points", path, SMALL)
    assert code == worker.EXIT_OK, result
    assert result["stats"]["ignored"]["loose_vertices"] > 0
    cams = json.loads((staging / layout.CAMERAS).read_text())
    res = cams["resolution"][0]
    for view in cams["views"]:
        img = rgba(staging / view["file"])
        x0, y0, x1, y1 = alpha_bbox(img)
        # The visible sphere, normalised alone, is the radius-0.5 ball at the origin: its silhouette is a disc
        # centred in the image of half-width f * r / sqrt(d^2 - r^2).
        f = np.array(view["K"])[0, 0]
        d = view["distance"]
        half = f * 0.5 / math.sqrt(d * d - 0.25)
        centre = np.array([(x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2])
        assert np.abs(centre - res / 2).max() <= 2, (centre, res)
        assert abs((x1 + 1 - x0) - 2 * half) <= 2 and abs((y1 + 1 - y0) - 2 * half) <= 2, (x0, x1, half)


def test_points_only_is_no_mesh_and_points_never_count(tmp):
    pts = np.random.default_rng(0).uniform(-1, 1, (20, 3))
    code, result, _ = run_worker(tmp, "points-only", write_gltf(tmp / "points.gltf", pts, None, None), SMALL)
    assert (code, result["reason"]) == (worker.EXIT_FAILED, "no_mesh")
    assert "20 loose vertices" in result["message"]


HIDDEN_SCRIPT = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_cube_add(size=2.0)  # visible: [-1, 1]^3
bpy.ops.mesh.primitive_cube_add(size=2.0, location=(50, 0, 0))
bpy.context.active_object.hide_render = True
bpy.ops.mesh.primitive_cube_add(size=2.0, location=(0, -40, 0))
bpy.context.active_object.visible_camera = False
mesh = bpy.data.meshes.new("cloud")  # two loose points, converted: Cycles renders point clouds, they count
mesh.from_pydata([(1, 0, 0), (3, 0, 0)], [], [])
cloud = bpy.data.objects.new("cloud", mesh)
bpy.context.scene.collection.objects.link(cloud)
bpy.context.view_layer.objects.active = cloud
bpy.ops.object.select_all(action="DESELECT")
cloud.select_set(True)
bpy.ops.object.convert(target="POINTCLOUD")
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
"""


def test_hidden_objects_are_ignored_and_point_clouds_count(tmp):
    path = tmp / "hidden.blend"
    subprocess.run(
        [sys.executable, "-c", HIDDEN_SCRIPT, str(path)], check=True, capture_output=True, timeout=120
    )
    code, result, _ = run_worker(tmp, "hidden", path, dataclasses.replace(SMALL, resolution=32))
    assert code == worker.EXIT_OK, result
    # Rendered extent: x in [-1, 3] (cube + cloud), y and z in [-1, 1]: scale 1/4, centre x = 1.
    assert result["normalization"]["scale"] == pytest.approx(0.25, rel=1e-6)
    assert result["normalization"]["offset"] == pytest.approx([-0.25, 0.0, 0.0], abs=1e-6)
    assert result["stats"]["ignored"] == {"loose_vertices": 0, "hidden_objects": 2}


# --- 4. non-finite positions ----------------------------------------------------------------------------------


def test_non_finite_obj_fails_before_the_importer_repairs_it(tmp):
    # Blender's OBJ importer would read the inf as 0 and render a different, flat object as ok.
    path = tmp / "inf.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv inf 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    code, result, _ = run_worker(tmp, "inf-obj", path, SMALL)
    assert (code, result["reason"]) == (worker.EXIT_FAILED, "non_finite")
    assert "importer would silently set them to 0" in result["message"]


# --- 5. instanced geometry -------------------------------------------------------------------------------------

INSTANCE_SCRIPT = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2)  # 80 faces
src = bpy.context.active_object
for i in range(24):
    o = bpy.data.objects.new(f"inst{i}", src.data)  # linked duplicates share one mesh
    o.location = (i % 5, i // 5, 0)
    bpy.context.scene.collection.objects.link(o)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
"""


def test_instanced_faces_count_once_for_the_memory_cap(tmp):
    path = tmp / "instanced.blend"
    subprocess.run(
        [sys.executable, "-c", INSTANCE_SCRIPT, str(path)], check=True, capture_output=True, timeout=120
    )
    # 25 objects share one 80-face mesh: 2000 evaluated faces, 80 unique.
    under = dataclasses.replace(SMALL, resolution=32, limits=LimitsConfig(max_faces=1000))
    code, result, _ = run_worker(tmp, "inst-ok", path, under)
    assert code == worker.EXIT_OK, result
    assert (result["stats"]["faces"], result["stats"]["unique_faces"]) == (2000, 80)
    capped = dataclasses.replace(under, limits=LimitsConfig(max_faces=1000, max_evaluated_faces=1500))
    code, result, _ = run_worker(tmp, "inst-capped", path, capped)
    assert (code, result["reason"]) == (worker.EXIT_FAILED, "too_many_faces")
    assert "max_evaluated_faces=1500" in result["message"]
    unique = dataclasses.replace(under, limits=LimitsConfig(max_faces=50))
    code, result, _ = run_worker(tmp, "inst-unique", path, unique)
    assert (code, result["reason"]) == (worker.EXIT_FAILED, "too_many_faces")
    assert "80 unique faces exceed limits.max_faces=50" in result["message"]


# --- framing ---------------------------------------------------------------------------------------------------


def test_mvdream_framing_spans_resolution_over_jitter(tmp):
    # Jitter above 1 keeps the square inside the image so its width can be measured.
    sampling = dataclasses.replace(
        FLAT, views=1, framing="mvdream", distance_jitter_min=1.15, distance_jitter_max=1.25
    )
    cfg = dataclasses.replace(SMALL, cameras=sampling)
    code, result, staging = run_worker(tmp, "square", write_square_obj(tmp / "square.obj"), cfg)
    assert code == worker.EXIT_OK, result
    cams = json.loads((staging / layout.CAMERAS).read_text())
    assert cams["framing"] == "mvdream"
    view = cams["views"][0]
    jitter = view["distance"] * math.tan(math.radians(view["fov_deg"]) / 2) / 0.5
    assert 1.15 <= jitter <= 1.25
    img = rgba(staging / view["file"])
    # Alpha-weighted width of the middle rows: continuous, so antialiased edges count by their coverage.
    width = img[28:36, :, 3].sum(axis=1).mean() / 255
    assert abs(width - 64 / jitter) <= 1, (width, 64 / jitter)
