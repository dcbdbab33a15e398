"""Regenerate the demo GLBs and captions.jsonl that ship in ``mvforge/assets/demo``: a maintainer tool, run from
the repository root as ``python tools/make_demo_assets.py OUT`` (``OUT`` = ``mvforge/assets/demo`` to update
the committed files).

Deterministic: the same code writes byte-identical files (tests/assets compares a fresh generation with the
committed files), so the demo renders and shards built from them are reproducible too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tools.demo_assets and mvforge from this checkout

from mvforge.assets import CAPTIONS, DemoObject  # noqa: E402
from mvforge.fsutil import atomic_write_bytes, atomic_write_text  # noqa: E402
from tools.demo_assets.gltf import glb_bytes  # noqa: E402
from tools.demo_assets.objects import DEMO_SPECS  # noqa: E402


def generate_demo_assets(out_dir: str | Path) -> list[tuple[DemoObject, int, int]]:
    """Write every demo GLB and captions.jsonl into ``out_dir``.

    Returns (object, triangles, bytes) per object, in the order of ``DEMO_SPECS``.
    """
    out_dir = Path(out_dir)
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for obj, tris, size in generate_demo_assets(args[0]):
        print(f"{obj.uid}  {tris} triangles  {size / 1000:.1f} KB")
    print(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
