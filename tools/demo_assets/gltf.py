"""A minimal, deterministic GLB 2.0 writer: one node, one mesh, one primitive per PBR material.

Spec: Khronos glTF 2.0 (https://registry.khronos.org/glTF/specs/2.0/glTF-2.0.html), "GLB File Format
Specification": a 12-byte header, a JSON chunk padded with spaces and a BIN chunk padded with zeros, both to
4-byte multiples. Accessors carry min/max for POSITION (required by the spec) and are 4-byte aligned.

glTF is Y-up with +Z the front; the mvforge world is Blender's Z-up with -Y the front (docs/design.md §3).
Blender's glTF importer maps glTF (x, y, z) to Blender (x, -z, y), so writing Blender (x, y, z) as glTF (x, z,
-y) makes an object imported into Blender stand exactly as it was modelled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tools.demo_assets.mesh import Part

GLB_MAGIC = 0x46546C67  # b"glTF"
CHUNK_JSON = 0x4E4F534A  # b"JSON"
CHUNK_BIN = 0x004E4942  # b"BIN\0"
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
TRIANGLES = 4


@dataclass(frozen=True)
class Material:
    """A glTF metallic-roughness material with a constant colour (no textures)."""

    name: str
    rgba: tuple[float, float, float, float]
    """Linear base colour factor and alpha, each in [0, 1] (glTF baseColorFactor is linear, not sRGB)."""
    metallic: float = 0.0
    roughness: float = 0.5
    emissive: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Linear emissive colour (glTF emissiveFactor); black = not glowing."""


def srgb(hex_colour: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    """Linear RGBA of an sRGB hex colour like "#c8102e" (colours are picked by eye in sRGB)."""
    h = hex_colour.lstrip("#")
    out = []
    for i in (0, 2, 4):
        c = int(h[i : i + 2], 16) / 255.0
        # The sRGB transfer function (IEC 61966-2-1).
        out.append(round(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4, 6))
    return (out[0], out[1], out[2], alpha)


def _zup_to_yup(v: np.ndarray) -> np.ndarray:
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def glb_bytes(name: str, primitives: Sequence[tuple[Material, Part]]) -> bytes:
    """The GLB file of one object: ``primitives`` are (material, part) pairs in the mvforge Z-up world."""
    if not primitives:
        raise ValueError("glb_bytes: an object needs at least one primitive")
    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []
    materials: list[dict] = []
    prims: list[dict] = []

    def add_view(data: bytes, target: int) -> int:
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": target})
        blob.extend(_pad(data, b"\0"))
        return len(views) - 1

    for material, part in primitives:
        pos = _zup_to_yup(part.positions).astype("<f4")
        nor = _zup_to_yup(part.normals).astype("<f4")
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(nor))):
            raise ValueError(f"{name}: non-finite vertex data in material {material.name}")
        small = len(pos) <= 0xFFFF
        idx = part.triangles.astype("<u2" if small else "<u4").reshape(-1)
        pos_acc = len(accessors)
        accessors.append(
            {
                "bufferView": add_view(pos.tobytes(), ARRAY_BUFFER),
                "componentType": FLOAT,
                "count": len(pos),
                "type": "VEC3",
                "min": [float(x) for x in pos.min(axis=0)],
                "max": [float(x) for x in pos.max(axis=0)],
            }
        )
        accessors.append(
            {
                "bufferView": add_view(nor.tobytes(), ARRAY_BUFFER),
                "componentType": FLOAT,
                "count": len(nor),
                "type": "VEC3",
            }
        )
        accessors.append(
            {
                "bufferView": add_view(idx.tobytes(), ELEMENT_ARRAY_BUFFER),
                "componentType": UNSIGNED_SHORT if small else UNSIGNED_INT,
                "count": len(idx),
                "type": "SCALAR",
            }
        )
        mat = {
            "name": material.name,
            "pbrMetallicRoughness": {
                "baseColorFactor": list(material.rgba),
                "metallicFactor": material.metallic,
                "roughnessFactor": material.roughness,
            },
        }
        if any(material.emissive):
            mat["emissiveFactor"] = list(material.emissive)
        if material.rgba[3] < 1.0:
            mat["alphaMode"] = "BLEND"
        materials.append(mat)
        prims.append(
            {
                "attributes": {"POSITION": pos_acc, "NORMAL": pos_acc + 1},
                "indices": pos_acc + 2,
                "material": len(materials) - 1,
                "mode": TRIANGLES,
            }
        )

    doc = {
        "asset": {"version": "2.0", "generator": "mvforge.assets (procedural demo objects)"},
        "scene": 0,
        "scenes": [{"name": name, "nodes": [0]}],
        "nodes": [{"name": name, "mesh": 0}],
        "meshes": [{"name": name, "primitives": prims}],
        "materials": materials,
        "buffers": [{"byteLength": len(blob)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    json_chunk = _pad(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8"), b" ")
    bin_chunk = bytes(blob)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join(
        [
            struct.pack("<III", GLB_MAGIC, 2, total),
            struct.pack("<II", len(json_chunk), CHUNK_JSON),
            json_chunk,
            struct.pack("<II", len(bin_chunk), CHUNK_BIN),
            bin_chunk,
        ]
    )
