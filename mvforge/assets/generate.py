"""Regenerate the demo GLBs and captions.jsonl: ``mvdata demo-assets`` or ``python -m mvforge.assets.generate``.

Deterministic: the same code writes byte-identical files (tests/assets compares a fresh generation with the
committed files), so the demo renders and shards built from them are reproducible too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mvforge.assets import CAPTIONS, DEMO_DIR, DemoObject
from mvforge.assets.gltf import glb_bytes
from mvforge.assets.objects import DEMO_SPECS
from mvforge.fsutil import atomic_write_bytes, atomic_write_text


def generate_demo_assets(out_dir: Path | None = None) -> list[tuple[DemoObject, int, int]]:
    """Write every demo GLB and captions.jsonl into ``out_dir`` (default: the package's demo/ directory).

    Returns (object, triangles, bytes) per object, in the order of ``DEMO_SPECS``.
    """
    out_dir = DEMO_DIR if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, lines = [], []
    for spec in DEMO_SPECS:
        primitives = spec.build().primitives()
        data = glb_bytes(spec.uid, primitives)
        path = out_dir / f"{spec.uid}.glb"
        atomic_write_bytes(path, data)
        triangles = sum(len(part.triangles) for _, part in primitives)
        rec = {"uid": spec.uid, "file": path.name, "caption": spec.caption, "triangles": triangles}
        lines.append(json.dumps(rec, sort_keys=True))
        results.append((DemoObject(spec.uid, path, spec.caption), triangles, len(data)))
    atomic_write_text(out_dir / CAPTIONS, "\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    for obj, tris, size in generate_demo_assets(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(f"{obj.path}  {tris} triangles  {size} bytes")
