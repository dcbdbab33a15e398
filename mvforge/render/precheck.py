"""Checks of a 3D file made before Blender imports it (issue 11): what the importer would silently repair.

In bpy 5.0.1 the glTF, OBJ, ASCII PLY and ASCII STL importers replace ±inf / NaN coordinates by 0 without a
word, so such a file becomes another (often flat) object and the post-import ``non_finite`` guard of
``blender_scene.check_geometry`` never sees it. Here the positions are read first with trimesh (a well-kept
reader that keeps non-finite values when ``process=False``). Compressed glTF (Draco, meshopt) needs its decoder,
which trimesh lacks: there the POSITION accessors' ``min`` / ``max`` bounds, which the glTF spec requires, are
checked instead. No bpy here: the worker calls this before the import, tests call it directly.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np

# Importers of mvforge.render.plan.FORMATS that hide non-finite coordinates (binary PLY/STL are read too: the
# check is cheap and the same code path serves both encodings).
HIDING_IMPORTERS = {"gltf", "obj", "ply", "stl"}
COMPRESSION_EXTENSIONS = {"KHR_draco_mesh_compression", "EXT_meshopt_compression"}
GLB_MAGIC = b"glTF"
GLB_JSON_CHUNK = 0x4E4F534A


def non_finite_positions(importer: str | None, path: str | Path) -> tuple[int | None, str]:
    """Count the positions of ``path`` with a NaN or infinite coordinate, before any importer repairs them.

    Returns ``(count, how)``: ``how`` is ``"trimesh"`` (every position read), ``"accessor_bounds"`` (compressed
    glTF: count = POSITION accessors whose min/max is non-finite or missing), or ``"not_needed"`` /
    ``"unreadable"`` with count None (the importer keeps non-finite values, or the file is malformed: the
    importer then reports it as ``import_error``). Never raises for a bad file.
    """
    if importer not in HIDING_IMPORTERS:
        return None, "not_needed"
    path = Path(path)
    if importer == "gltf":
        doc = gltf_json(path)
        used = set((doc or {}).get("extensionsUsed") or [])
        if doc is not None and used & COMPRESSION_EXTENSIONS:
            return accessor_bounds_non_finite(doc), "accessor_bounds"
    try:
        import trimesh

        # trimesh logs every unsupported glTF extension and missing texture at WARNING: not our findings.
        logging.getLogger("trimesh").setLevel(logging.ERROR)
        # Face normals of a non-finite triangle are NaN: numpy's warnings there are expected, not news.
        with np.errstate(invalid="ignore", divide="ignore"):
            loaded = trimesh.load(str(path), process=False, force=None, skip_materials=True)
    except Exception:  # a malformed file: the importer decides (import_error), not this check
        return None, "unreadable"
    geometries = loaded.geometry.values() if hasattr(loaded, "geometry") else [loaded]
    bad = 0
    for geom in geometries:
        vertices = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), dtype=np.float64)
        bad += int((~np.isfinite(vertices)).any(axis=1).sum()) if vertices.size else 0
    return bad, "trimesh"


def gltf_json(path: Path) -> dict | None:
    """The JSON document of a .gltf or .glb file, or None when it cannot be read."""
    try:
        data = path.read_bytes()
        if data[:4] == GLB_MAGIC:
            length, kind = struct.unpack_from("<II", data, 12)
            if kind != GLB_JSON_CHUNK:
                return None
            return json.loads(data[20 : 20 + length])
        return json.loads(data)
    except (OSError, ValueError, struct.error):
        return None


def accessor_bounds_non_finite(doc: dict) -> int:
    """POSITION accessors of ``doc`` whose ``min``/``max`` hold a non-finite value or are missing (the glTF
    spec requires both, and a writer computes them from the positions it compressed)."""
    accessors = doc.get("accessors") or []
    bad = 0
    for mesh in doc.get("meshes") or []:
        for prim in mesh.get("primitives") or []:
            index = (prim.get("attributes") or {}).get("POSITION")
            if not isinstance(index, int) or not 0 <= index < len(accessors):
                continue
            acc = accessors[index]
            bounds = list(acc.get("min") or []) + list(acc.get("max") or [])
            finite = len(bounds) == 6 and all(isinstance(x, int | float) and np.isfinite(x) for x in bounds)
            bad += 0 if finite else 1
    return bad
