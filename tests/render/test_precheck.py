"""Non-finite positions are caught before an importer can repair them (design §2.1), for every hiding format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from mvforge.render.precheck import non_finite_positions

DATA = Path(__file__).resolve().parents[1] / "data"
TRI = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]


def obj_text(verts) -> str:
    return "".join(f"v {x} {y} {z}\n" for x, y, z in verts) + "f 1 2 3\nf 1 2 4\n"


def ascii_ply(verts) -> str:
    head = (
        f"ply\nformat ascii 1.0\nelement vertex {len(verts)}\nproperty float x\nproperty float y\n"
        "property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n"
    )
    return head + "".join(f"{x} {y} {z}\n" for x, y, z in verts) + "3 0 1 2\n3 0 1 3\n"


def ascii_stl(verts) -> str:
    facets = "".join(
        "facet normal 0 0 1\nouter loop\n"
        + "".join(f"vertex {x} {y} {z}\n" for x, y, z in tri)
        + "endloop\nendfacet\n"
        for tri in ((verts[0], verts[1], verts[2]), (verts[0], verts[1], verts[3]))
    )
    return f"solid t\n{facets}endsolid t\n"


def gltf_text(verts, *, draco: bool = False) -> str:
    pos = np.asarray(verts, dtype="<f4")
    idx = np.array([0, 1, 2, 0, 1, 3], dtype="<u4")
    data = pos.tobytes() + idx.tobytes()
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(data), "uri": "data:;base64," + base64.b64encode(data).decode()}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": pos.nbytes},
            {"buffer": 0, "byteOffset": pos.nbytes, "byteLength": idx.nbytes},
        ],
        "accessors": [
            # The writer's bounds: NaN-propagating min/max as numpy computes them.
            {"bufferView": 0, "componentType": 5126, "count": len(pos), "type": "VEC3",
             "min": pos.min(axis=0).tolist(), "max": pos.max(axis=0).tolist()},
            {"bufferView": 1, "componentType": 5125, "count": 6, "type": "SCALAR"},
        ],
    }  # fmt: skip
    if draco:
        doc["extensionsUsed"] = ["KHR_draco_mesh_compression"]
    return json.dumps(doc)  # Python writes NaN / Infinity tokens, as some exporters do


WRITERS = {"obj": obj_text, "ply": ascii_ply, "stl": ascii_stl, "gltf": gltf_text}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_positions_are_counted_before_import(tmp_path, fmt, bad):
    verts = [list(v) for v in TRI]
    verts[2][0] = bad
    path = tmp_path / f"bad.{fmt}"
    path.write_text(WRITERS[fmt](verts))
    count, how = non_finite_positions(fmt, path)
    assert how == "trimesh" and count >= 1, (fmt, count, how)
    clean = tmp_path / f"clean.{fmt}"
    clean.write_text(WRITERS[fmt](TRI))
    assert non_finite_positions(fmt, clean) == (0, "trimesh")


def test_compressed_gltf_is_checked_by_its_accessor_bounds(tmp_path):
    bad = tmp_path / "draco.gltf"
    bad.write_text(gltf_text([(0, 0, 0), (1, 0, 0), (float("nan"), 1, 0), (0, 0, 1)], draco=True))
    assert non_finite_positions("gltf", bad) == (1, "accessor_bounds")
    good = tmp_path / "draco-ok.gltf"
    good.write_text(gltf_text(TRI, draco=True))
    assert non_finite_positions("gltf", good) == (0, "accessor_bounds")


def test_other_formats_and_malformed_files_are_left_to_the_importer():
    assert non_finite_positions("blend", DATA / "glb" / "Duck.glb") == (None, "not_needed")
    for path in sorted((DATA / "malformed").glob("*.glb")):
        count, how = non_finite_positions("gltf", path)
        assert (count, how) in {(None, "unreadable"), (0, "trimesh")}, path
    # Real files pass: glb (binary chunk) read by trimesh, with the JSON chunk parsed for extensions.
    assert non_finite_positions("gltf", DATA / "glb" / "CesiumMilkTruck.glb") == (0, "trimesh")
