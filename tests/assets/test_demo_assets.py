"""The embedded demo objects: deterministic, valid GLB 2.0, closed outward-facing meshes, coloured, captioned."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from mvforge.assets import DEMO_DIR, list_demo_objects
from mvforge.formats.renders import UID_RE
from tools.demo_assets.mesh import box, capsule, lathe, prism, sphere, torus, transform, tube
from tools.make_demo_assets import generate_demo_assets

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "make_demo_assets.py"

OBJECTS = list_demo_objects()
REQUIRED = {
    "mug",
    "chair",
    "table-lamp",
    "mushroom",
    "snowman",
    "rocket",
    "potted-cactus",
    "donut",
    "kettle",
    "bench",
    "traffic-cone",
    "desk",
}


def test_regeneration_is_byte_identical_to_the_committed_files(tmp_path):
    generate_demo_assets(tmp_path)
    committed = sorted(p.name for p in DEMO_DIR.iterdir() if p.suffix in (".glb", ".jsonl"))
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), (
            f"{name} differs: run `python tools/make_demo_assets.py mvforge/assets/demo`"
        )


def test_listing_uids_and_captions():
    assert len(OBJECTS) >= 12
    uids = [o.uid for o in OBJECTS]
    assert len(set(uids)) == len(uids)
    assert {u.removeprefix("demo-") for u in uids} >= REQUIRED
    for o in OBJECTS:
        assert UID_RE.match(o.uid) and "." not in o.uid
        assert o.path.is_file() and o.path.suffix == ".glb"
        assert len(o.caption.split()) >= 3, o.caption


def _glb_json(path):
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert (magic, version, total) == (0x46546C67, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and 28 + json_len + bin_len == len(data)
    assert doc["buffers"][0]["byteLength"] <= bin_len
    return doc, data[28 + json_len :]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: o.uid)
def test_glb_structure_and_accessor_bounds(obj):
    doc, blob = _glb_json(obj.path)
    assert doc["asset"]["version"] == "2.0"
    prims = doc["meshes"][0]["primitives"]
    assert len({p["material"] for p in prims}) == len(prims)  # one primitive per material
    for p in prims:
        acc = doc["accessors"][p["attributes"]["POSITION"]]
        view = doc["bufferViews"][acc["bufferView"]]
        assert view["byteOffset"] % 4 == 0
        pos = np.frombuffer(blob, "<f4", acc["count"] * 3, view["byteOffset"]).reshape(-1, 3)
        np.testing.assert_array_equal(pos.min(0), acc["min"])
        np.testing.assert_array_equal(pos.max(0), acc["max"])


def _merged(scene: trimesh.Scene) -> trimesh.Trimesh:
    """All primitives as one mesh, coincident vertices welded (ignoring normals): closed parts become closed."""
    meshes = list(scene.dump()) if hasattr(scene, "dump") else list(scene.geometry.values())
    verts, faces, off = [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + off)
        off += len(m.vertices)
    mesh = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    return mesh


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: o.uid)
def test_mesh_is_closed_outward_and_coloured(obj):
    scene = trimesh.load(obj.path, force="scene")
    # Y-up in glTF: the height is the extent along Y, and every object stands on y = 0.
    lo, hi = scene.bounds
    extent = hi - lo
    assert np.all(extent > 0.02) and np.all(extent < 2.0), extent
    assert abs(lo[1]) < 0.03, f"{obj.uid} does not stand on the ground: min y {lo[1]}"
    assert extent.max() / extent.min() < 12
    mesh = _merged(scene)
    assert len(mesh.faces) < 8000
    assert mesh.is_winding_consistent
    for body in mesh.split(only_watertight=False):
        assert body.is_watertight, f"{obj.uid}: open part at {body.bounds.tolist()}"
        assert body.volume > 0, f"{obj.uid}: inward-facing part at {body.bounds.tolist()}"
    coloured = 0
    for geom in scene.geometry.values():
        # Stored vertex normals agree with the winding (independent of the generator's own bookkeeping).
        face_n = geom.face_normals
        vert_n = geom.vertex_normals[geom.faces].mean(axis=1)
        assert np.mean(np.einsum("ij,ij->i", face_n, vert_n) > 0) > 0.99, geom.metadata.get("name")
        rgba = np.asarray(geom.visual.material.baseColorFactor, dtype=float)
        coloured += int(np.ptp(rgba[:3]) > 40)  # uint8: a saturated colour, not a grey
    assert coloured >= 1, f"{obj.uid} has no coloured material"


@pytest.mark.parametrize(
    "part",
    [
        box((0.1, 0.2, 0.3), (0.5, 0.2, 0.1)),
        sphere(0.3, (1.0, 0.0, 0.0)),
        capsule(0.1, 0.0, 0.5),
        torus(0.5, 0.1),
        tube([(0, 0, 0), (0.3, 0, 0), (0.4, 0.2, 0.3)], 0.05),
        prism([(0.0, 0.0), (0.2, 0.0), (0.0, 0.3)], 0.04),
        lathe([[(0.0, 0.0), (0.3, 0.0)], [(0.3, 0.0), (0.2, 0.4)], [(0.2, 0.4), (0.0, 0.4)]]),
        transform(box((0, 0, 0), (1, 1, 1)), scale=(2.0, 0.5, 1.0), translate=(3, 0, 0)),
    ],
    ids=["box", "sphere", "capsule", "torus", "tube", "prism", "lathe", "scaled-box"],
)
def test_primitives_are_closed_with_outward_normals(part):
    mesh = trimesh.Trimesh(part.positions, part.triangles, process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    face_n = trimesh.Trimesh(part.positions, part.triangles, process=False).face_normals
    assert np.all(np.einsum("ij,ij->i", face_n, part.normals[part.triangles].mean(axis=1)) > 0)


def test_primitive_volumes_match_formulas():
    """Independent check of the geometry: volumes against closed-form values (coarse tessellation loses a bit)."""
    r = 0.3
    vol = trimesh.Trimesh(
        sphere(r, segments=96, rings=48).positions, sphere(r, segments=96, rings=48).triangles
    )
    assert vol.volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.01)
    t = torus(0.5, 0.1, 128, 64)
    assert trimesh.Trimesh(t.positions, t.triangles).volume == pytest.approx(
        2 * np.pi**2 * 0.5 * 0.1**2, rel=0.01
    )
    b = box((0, 0, 0), (0.5, 0.2, 0.1))
    assert trimesh.Trimesh(b.positions, b.triangles).volume == pytest.approx(0.01)


def test_the_script_regenerates(tmp_path):
    """``python tools/make_demo_assets.py OUT`` (the maintainer tool) writes the committed files into OUT."""
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path)
    assert [o.uid for o in list_demo_objects(tmp_path)] == [o.uid for o in OBJECTS]
    assert (tmp_path / "demo-mug.glb").read_bytes() == (DEMO_DIR / "demo-mug.glb").read_bytes()


def test_generation_does_not_depend_on_simd_dispatch(tmp_path):
    """Another CPU takes other numpy SIMD paths: emulate one by switching AVX/AVX2/FMA/AVX-512 dispatch off."""
    import os

    from numpy.core._multiarray_umath import __cpu_features__

    # Only features this CPU has may be named (numpy rejects the others); none on a CPU without them.
    wanted = (
        "AVX512F",
        "AVX512CD",
        "AVX512_SKX",
        "AVX512_CLX",
        "AVX512_CNL",
        "AVX512_ICL",
        "AVX2",
        "FMA3",
        "F16C",
        "AVX",
    )
    off = " ".join(f for f in wanted if __cpu_features__.get(f))
    if not off:
        pytest.skip("this CPU has no AVX/AVX-512 dispatch to switch off")
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": off}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for obj in OBJECTS:
        assert (tmp_path / obj.path.name).read_bytes() == obj.path.read_bytes(), obj.uid
