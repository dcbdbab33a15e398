"""Checks of a 3D file made before Blender imports it (docs/design.md §2.1): what the importer would silently
repair.

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


# Byte-order marks of the encodings a text format must not be in (OBJ, .mtl and glTF JSON are ASCII / UTF-8).
WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}  # fmt: skip
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
FBX_BINARY_MAGIC = b"Kaydara FBX Binary  \x00"
# How much of a text file is looked at for NUL bytes (a UTF-16 file without BOM has one every other byte).
TEXT_SNIFF_BYTES = 4096


def unsupported_encoding(importer: str | None, path: str | Path) -> str | None:
    """Why ``path`` is in an encoding or sub-format its importer cannot read, or None.

    A UTF-16 OBJ imports as an empty scene (then fails as ``zero_extent`` or ``no_mesh``, hiding the cause) and
    an Alembic archive in the obsolete HDF5 layout (Alembic before 1.5) fails with a bare importer error; both
    are ``unsupported_format`` with this line as the message. Never raises for an unreadable file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(TEXT_SNIFF_BYTES)
    except OSError:
        return None
    if importer == "alembic" and head.startswith(HDF5_MAGIC):
        return "Alembic archive in the obsolete HDF5 layout (Blender reads only Ogawa archives; re-export it)"
    # A .glb is binary: one with a bad magic is the importer's import_error, not an encoding question.
    ascii_fbx = head.lstrip().startswith(b";") or b"FBXHeaderExtension:" in head
    if importer == "fbx" and not head.startswith(FBX_BINARY_MAGIC) and ascii_fbx:
        return "ASCII FBX file (Blender reads only binary FBX)"
    # Header 'BLENDER' + pointer size ('_' 32-bit, '-' 64-bit) + endianness ('v' little, 'V' big).
    if importer == "blend" and head[:7] == b"BLENDER" and head[7:8] in (b"_", b"-") and head[8:9] == b"V":
        return ".blend written by a big-endian Blender (Blender 5 reads only little-endian files)"
    text_format = importer == "obj" or (importer == "gltf" and Path(path).suffix.lower() == ".gltf")
    if not text_format:
        return None
    for bom, name in WIDE_BOMS.items():
        if head.startswith(bom):
            return f"{importer.upper()} file is {name} text ({importer.upper()} must be ASCII or UTF-8)"
    if b"\x00" in head:
        return f"{importer.upper()} file holds NUL bytes (not ASCII or UTF-8 text: UTF-16 without a BOM?)"
    return None
