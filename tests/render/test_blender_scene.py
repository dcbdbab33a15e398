"""Real Blender renders through the real worker process (mvforge.render.worker -> blender_scene).

Every job is planned by ``plan_job`` at tiny settings and run as ``python -m mvforge.render.worker`` in a
subprocess with a timeout, exactly as the runner does. Renders are shared between tests by module fixtures.
"""

from __future__ import annotations

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

from mvforge.cameras import OrbitSampling, intrinsics, is_rigid, orbit_c2w, project
from mvforge.formats import renders as layout
from mvforge.render import worker
from mvforge.render.config import CyclesConfig, LimitsConfig, PassesConfig, RenderConfig
from mvforge.render.plan import SourceObject, hdri_pool, plan_job

DATA = Path(__file__).resolve().parents[1] / "data"
WORKER_TIMEOUT_S = 180

# The marker of the camera round trip: a red cube centred on a known point, inside the unit cube.
MARKER = np.array([0.15, -0.1, 0.2])
MARKER_HALF = 0.04
# Corner cubes pin the bbox to exactly [-0.5, 0.5]^3, so normalisation is the identity.
CORNER_HALF = 0.02
# The same object at another scale and place: normalisation must undo both.
BIG_SCALE = 37.0
BIG_OFFSET = np.array([100.0, -50.0, 20.0])

TINY = RenderConfig(
    resolution=64,
    cameras=OrbitSampling(views=4),
    cycles=CyclesConfig(samples=8, threads=1),
    passes=PassesConfig(depth=True, normal=True),
)
CHEAP = RenderConfig(resolution=32, cameras=OrbitSampling(views=2), cycles=CyclesConfig(samples=4, threads=1))


# --- inputs generated here -------------------------------------------------------------------------------------


def cube(center, half: float) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    verts = np.asarray(center, dtype=float) + half * signs
    # Vertex k has bits (x, y, z) = (k >> 2, k >> 1, k) & 1; quads wound outwards.
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return verts, quads


def write_marker_obj(
    path: Path,
    scale: float = 1.0,
    offset=(0.0, 0.0, 0.0),
    *,
    marker_alpha: float = 1.0,
    missing_texture: bool = False,
) -> Path:
    """Eight blue corner cubes spanning exactly [-0.5, 0.5]^3 and one red marker cube, scaled then offset.

    ``missing_texture`` gives the corners a texture file that does not exist (Cycles shows it magenta).
    """
    parts = [(cube(MARKER, MARKER_HALF), "marker")]
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                c = (0.5 - CORNER_HALF) * np.array([sx, sy, sz])
                parts.append((cube(c, CORNER_HALF), "corner"))
    path.with_suffix(".mtl").write_text(
        f"newmtl marker\nKd 1 0 0\nd {marker_alpha}\nnewmtl corner\nKd 0 0 1\nd {marker_alpha}\n"
        + ("map_Kd no-such-texture.png\n" if missing_texture else "")
    )
    lines = [f"mtllib {path.with_suffix('.mtl').name}"]
    base = 1
    for i, ((verts, quads), mat) in enumerate(parts):
        lines.append(f"o part{i}\nusemtl {mat}")
        # OBJ is Y-up: Blender's importer maps file (x, y, z) to world (x, -z, y), so write world (x, y, z)
        # as file (x, z, -y).
        lines += [f"v {x!r} {z!r} {-y!r}" for x, y, z in verts * scale + np.asarray(offset)]
        lines += ["f " + " ".join(str(base + k) for k in q) for q in quads]
        base += len(verts)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_binary_ply(path: Path, verts: np.ndarray, faces: list[tuple[int, ...]]) -> Path:
    """A little-endian binary PLY."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = np.asarray(verts, dtype="<f4").tobytes()
    for f in faces:
        body += struct.pack("<B", len(f)) + struct.pack(f"<{len(f)}i", *f)
    path.write_bytes(header.encode() + body)
    return path


# The importers of text and binary formats (OBJ, PLY, glTF) replace NaN coordinates by 0; the worker catches
# those before importing (tests/render/test_precheck.py). A NaN vertex reaches the scene, and the post-import
# guard, only through a .blend: made here by Blender itself, in a separate process.
NAN_BLEND_SCRIPT = """
import sys, bpy, numpy as np
bpy.ops.wm.read_factory_settings(use_empty=True)
mesh = bpy.data.meshes.new("tri")
mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
mesh.vertices.foreach_set("co", np.array([0, 0, 0, 1, 0, 0, float("nan"), 1, 0], dtype=np.float32))
bpy.context.scene.collection.objects.link(bpy.data.objects.new("tri", mesh))
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
"""


def write_nan_blend(path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-c", NAN_BLEND_SCRIPT, str(path)], check=True, capture_output=True, timeout=120
    )
    return path


def write_camera_only_gltf(path: Path) -> Path:
    """A valid glTF whose scene holds only a camera and an empty node: no mesh at all."""
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0, 1]}],
        "nodes": [{"name": "cam", "camera": 0, "translation": [0, 0, 3]}, {"name": "empty"}],
        "cameras": [{"type": "perspective", "perspective": {"yfov": 0.8, "znear": 0.1}}],
    }
    path.write_text(json.dumps(doc))
    return path


# --- running the worker ----------------------------------------------------------------------------------------


def run_worker(tmp: Path, name: str, path: Path, cfg: RenderConfig, *, uid: str | None = None, **overrides):
    """Plan a job for ``path`` and run the real worker on it; returns (exit code, result.json, staging dir).

    ``uid`` (default ``name``) seeds the cameras and light; ``overrides`` replace keys of the planned job.
    """
    ext = path.suffix.lstrip(".").lower()
    obj = SourceObject(uid=uid or name, kind="local", ext=ext, path=str(path))
    job = plan_job(obj, cfg, hdri_pool(None))
    job.update(overrides)
    job_path = tmp / f"{name}.job.json"
    job_path.write_text(json.dumps(job))
    staging = tmp / f"{name}.staging"
    proc = subprocess.run(
        [sys.executable, "-m", "mvforge.render.worker", str(job_path), str(staging)],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    result_path = staging / worker.RESULT
    assert result_path.is_file(), f"{name}: no result.json (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(result_path.read_text()), staging


def rgba(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGBA"
        return np.asarray(img).astype(np.float64)


def marker_centroid(img: np.ndarray) -> np.ndarray:
    """Alpha-weighted centroid (x, y) of the red pixels, in continuous pixel coordinates (centres at +0.5)."""
    r, g, b, a = np.moveaxis(img, -1, 0)
    mask = (a > 128) & (r > g + 40) & (r > b + 40)
    assert mask.sum() >= 4, "marker not visible"
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def alpha_bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img[..., 3] > 128)
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("blender")


@pytest.fixture(scope="module")
def unit_render(tmp):
    return run_worker(tmp, "unit", write_marker_obj(tmp / "unit.obj"), TINY)


@pytest.fixture(scope="module")
def big_render(tmp):
    # Same uid as the unit object: same cameras and light, so the renders must match the unit ones.
    return run_worker(
        tmp,
        "big",
        write_marker_obj(tmp / "big.obj", BIG_SCALE, BIG_OFFSET, missing_texture=True),
        TINY,
        uid="unit",
        # The missing texture is stripped (docs/render_failures.md), so it must render exactly like the
        # untextured unit object.
        materials={"missing_textures": "strip", "vertex_colors": True},
    )


# --- 1. camera round trip --------------------------------------------------------------------------------------


def test_marker_lands_where_cameras_json_projects_it(unit_render):
    code, result, staging = unit_render
    assert code == worker.EXIT_OK and result["status"] == "ok"
    assert result["normalization"]["scale"] == pytest.approx(1.0, abs=1e-6)
    assert result["normalization"]["offset"] == pytest.approx([0, 0, 0], abs=1e-6)
    cams = json.loads((staging / layout.CAMERAS).read_text())
    assert cams["resolution"] == [64, 64] and len(cams["views"]) == 4
    for view in cams["views"]:
        c2w, K = np.array(view["c2w"]), np.array(view["K"])
        expected = project(MARKER[None], c2w, K)[0]
        found = marker_centroid(rgba(staging / view["file"]))
        assert np.linalg.norm(found - expected) < 2.0, (view["index"], found, expected)


def test_fit_framing_keeps_all_cube_corners_inside_the_alpha_box(unit_render):
    """Under ``fit`` (the default, docs/render.md), every corner of [-0.5, 0.5]^3 lands inside the rendered
    alpha box."""
    _, _, staging = unit_render
    cams = json.loads((staging / layout.CAMERAS).read_text())
    assert cams["framing"] == "fit"
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    for view in cams["views"]:
        x0, y0, x1, y1 = alpha_bbox(rgba(staging / view["file"]))
        uv = project(corners, np.array(view["c2w"]), np.array(view["K"]))
        # The corner cubes reach the corner points; a pixel of slack for the alpha > 128 cut.
        assert np.all(uv[:, 0] >= x0 - 1) and np.all(uv[:, 0] <= x1 + 2), (uv, x0, x1)
        assert np.all(uv[:, 1] >= y0 - 1) and np.all(uv[:, 1] <= y1 + 2), (uv, y0, y1)
        assert x0 > 0 and y0 > 0 and x1 < 63 and y1 < 63


def test_depth_pass_matches_camera_axis_distance(unit_render):
    _, _, staging = unit_render
    cams = json.loads((staging / layout.CAMERAS).read_text())
    depth_max = cams["passes"]["depth"]["depth_max"]
    for view in cams["views"]:
        img = rgba(staging / view["file"])
        x, y = marker_centroid(img).astype(int)
        with Image.open(staging / layout.view_name(view["index"], "depth")) as d:
            depth = np.asarray(d).astype(np.float64) / 65535 * depth_max
        c2w = np.array(view["c2w"])
        # Camera-axis depth of the marker centre; its visible face is up to a half-size (x sqrt 3) nearer.
        z_centre = -(np.linalg.inv(c2w) @ np.append(MARKER, 1.0))[2]
        assert z_centre - MARKER_HALF * math.sqrt(3) - 0.01 < depth[y, x] <= z_centre + 0.01
        assert np.all(depth[img[..., 3] == 0] == 0), "background must encode as 0"
        with Image.open(staging / layout.view_name(view["index"], "normal")) as n:
            normal = np.asarray(n).astype(np.float64) / 255 * 2 - 1
        lengths = np.linalg.norm(normal[img[..., 3] == 255], axis=-1)
        # Unit vectors, except where a pixel averages two faces of a cube (an edge).
        assert np.median(np.abs(lengths - 1)) < 0.02 and np.mean(np.abs(lengths - 1) < 0.15) > 0.7


def test_same_job_twice_gives_identical_files(tmp, unit_render):
    _, _, first = unit_render
    code, _, again = run_worker(tmp, "unit-again", tmp / "unit.obj", TINY, uid="unit")
    assert code == worker.EXIT_OK
    files = sorted(p.name for p in first.iterdir() if p.suffix in {".png"} or p.name == layout.CAMERAS)
    assert len(files) == 4 * 3 + 1
    for name in files:
        same = (first / name).read_bytes() == (again / name).read_bytes()
        if (
            not same and TINY.cycles.denoise and name.endswith(".png") and name.count(".") == 1
        ):  # RGBA: 000.png
            # OpenImageDenoise on CPU reduces in parallel threads, so a denoised pixel may move by 1/255 between
            # runs (seen once in CI); everything else (cameras, depth, normals, undenoised RGBA) is bit-exact.
            with Image.open(first / name) as a, Image.open(again / name) as b:
                diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max()
            assert diff <= 1, (name, diff)
            continue
        assert same, name


# --- 2. normalisation ------------------------------------------------------------------------------------------


def test_scaled_and_offset_object_renders_like_the_unit_one(unit_render, big_render):
    _, unit, unit_dir = unit_render
    code, big, big_dir = big_render
    assert code == worker.EXIT_OK
    norm = big["normalization"]
    assert norm["scale"] == pytest.approx(1 / BIG_SCALE, rel=1e-6)
    assert norm["offset"] == pytest.approx(list(-BIG_OFFSET / BIG_SCALE), abs=1e-6)
    # The recorded transform maps the input's marker onto the unit marker: x' = s x + offset.
    assert np.allclose(norm["scale"] * (MARKER * BIG_SCALE + BIG_OFFSET) + norm["offset"], MARKER, atol=1e-6)
    assert big["stats"]["faces"] == unit["stats"]["faces"] == 9 * 6
    assert (unit["stats"]["missing_textures"], big["stats"]["missing_textures"]) == (0, 1)
    assert big["stats"]["stripped_textures"] == 1
    for k in range(4):
        a, b = rgba(unit_dir / layout.view_name(k)), rgba(big_dir / layout.view_name(k))
        assert np.abs(np.array(alpha_bbox(a)) - np.array(alpha_bbox(b))).max() <= 1
        assert np.linalg.norm(marker_centroid(a) - marker_centroid(b)) < 0.5
        assert np.abs(a[..., 3] - b[..., 3]).mean() < 2.0


# --- 3. real third-party GLBs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glb_renders(tmp):
    files = sorted((DATA / "glb").glob("*.glb"))
    assert len(files) >= 5
    return {p.stem: run_worker(tmp, f"glb-{p.stem}", p, CHEAP) for p in files}


def test_real_glbs_render_with_consistent_cameras(glb_renders):
    for name, (code, result, staging) in glb_renders.items():
        assert code == worker.EXIT_OK, (name, result)
        assert result["stats"]["faces"] > 0 and result["stats"]["vertices"] > 0, name
        assert result["normalization"]["scale"] > 0
        cams = json.loads((staging / layout.CAMERAS).read_text())
        assert cams["convention"] == layout.CONVENTION
        for view in cams["views"]:
            c2w = np.array(view["c2w"])
            assert is_rigid(c2w)
            assert np.allclose(c2w, orbit_c2w(view["elevation_deg"], view["azimuth_deg"], view["distance"]))
            assert np.linalg.norm(c2w[:3, 3]) == pytest.approx(view["distance"])
            assert np.allclose(view["K"], intrinsics(view["fov_deg"], 32))
            img = rgba(staging / view["file"])
            assert img.shape == (32, 32, 4)
            assert (img[..., 3] > 0).mean() > 0.02, (name, view["index"])


def test_real_glb_stats(glb_renders):
    stats = {name: r[1]["stats"] for name, r in glb_renders.items()}
    assert stats["CesiumMilkTruck"]["animations"] >= 1
    assert all(s["missing_textures"] == 0 for s in stats.values())
    assert stats["BoxTextured"]["faces"] in (6, 12)  # a textured cube, as quads or triangles
    assert stats["Duck"]["materials"] >= 1


# --- 4. failures -----------------------------------------------------------------------------------------------


def hostile_cases(tmp: Path) -> list[tuple[str, Path, RenderConfig, str]]:
    """(name, input, config, expected reason) for generated bad inputs."""
    few_faces = dataclasses.replace(CHEAP, limits=LimitsConfig(max_faces=10))
    tri = [(0, 1, 2)]
    return [
        ("nan-vertex", write_nan_blend(tmp / "nan.blend"), CHEAP, "non_finite"),
        ("all-equal", write_binary_ply(tmp / "point.ply", [[0.3, 0.3, 0.3]] * 3, tri), CHEAP, "zero_extent"),
        ("no-mesh", write_camera_only_gltf(tmp / "camera.gltf"), CHEAP, "no_mesh"),
        ("too-many-faces", write_marker_obj(tmp / "faces.obj"), few_faces, "too_many_faces"),
        ("missing-file", tmp / "does-not-exist.glb", CHEAP, "import_error"),
        ("transparent", write_marker_obj(tmp / "clear.obj", marker_alpha=0.0), CHEAP, "empty_render"),
    ]


def test_every_bad_input_fails_with_its_reason_code(tmp):
    malformed = sorted((DATA / "malformed").glob("*.glb"))
    cases = [(f"malformed-{p.stem}", p, CHEAP, "import_error") for p in malformed]
    assert len(cases) == 6
    cases += hostile_cases(tmp)
    unknown = tmp / "thing.xyz"
    unknown.write_text("not a 3D file\n")
    got = {}
    for name, path, cfg, _ in cases:
        code, result, _ = run_worker(tmp, name, path, cfg)
        got[name] = (code, result.get("reason"))
    code, result, _ = run_worker(tmp, "unknown-ext", unknown, CHEAP)
    got["unknown-ext"] = (code, result.get("reason"))
    expected = {name: (worker.EXIT_FAILED, reason) for name, _, _, reason in cases}
    expected["unknown-ext"] = (worker.EXIT_FAILED, "unsupported_format")
    assert got == expected
