"""Does the known-answer render-back catch a mesh exported with the wrong up axis? (docs/demo.md)

`mvtrain sds` exports its Z-up mesh rotated to glTF's Y-up frame (mvforge/sds/export.py). A stage that forgot the
rotation would write the Z-up vertices as they are, and every glTF reader (`mvdata render` included) would stand
the object on its side. This script writes that broken file for each mesh of `make demo`'s render-back (the SDS
meshes) and for the same objects' ground-truth assets, renders both with the demo's render settings under the
ground-truth uids, and scores them as `make demo` does (`mvtrain eval --known-answer --generated`).

    .venv/bin/python bench/mesh_up_sabotage.py --world WORLD --out /tmp/z-up   # WORLD: a `make demo` output

Prints one markdown row per mesh: IoU and retrieval as exported, and left Z-up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import trimesh
from renderback import render_and_score  # bench/renderback.py, beside this script

from mvforge.assets import list_demo_objects
from mvforge.sds.export import Z_UP_TO_Y_UP


def left_z_up(src: Path, dst: Path) -> None:
    """``src`` (a Y-up glTF) as a stage that skipped the Z-up -> Y-up rotation would have written it."""
    scene = trimesh.load(src, force="scene")
    undo = np.eye(4)
    undo[:3, :3] = Z_UP_TO_Y_UP.T  # Y-up -> Z-up: the vertices the exporter held before its rotation
    scene.apply_transform(undo)
    dst.write_bytes(scene.export(file_type="glb"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--world", type=Path, required=True, help="a `make demo` output (sds-meshes.jsonl, eval-sds/)"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    world, out = args.world, args.out
    sds = [json.loads(line) for line in (world / "sds-meshes.jsonl").read_text().splitlines()]
    assets = {d.uid: d.path for d in list_demo_objects()}
    exported = {
        r["uid"]: r for r in json.loads((world / "eval-sds" / "known_answer.json").read_text())["captions"]
    }
    rows = []
    for kind, sources in (("SDS mesh", {e["uid"]: Path(e["path"]) for e in sds}),
                          ("ground truth", {e["uid"]: assets[e["uid"]] for e in sds})):  # fmt: skip
        d = out / kind.replace(" ", "-")
        (d / "z-up").mkdir(parents=True, exist_ok=True)
        entries = []
        for uid, src in sources.items():
            left_z_up(src, d / "z-up" / f"{uid}.glb")
            entries.append({"uid": uid, "path": str((d / "z-up" / f"{uid}.glb").resolve()), "caption": uid})
        broken = render_and_score(entries, d, world)
        for uid in sources:
            # As exported: the demo's own render-back (SDS) or the reference itself (ground truth: IoU 1).
            ok_iou, ok_ret = (
                (exported[uid]["iou"], exported[uid]["retrieved"]) if kind == "SDS mesh" else (1.0, uid)
            )
            b = broken[uid]
            rows.append(f"| {kind} | {uid} | {ok_iou:.2f} | {ok_ret} | {b['iou']:.2f} | {b['retrieved']} |")
    print("| mesh | object | IoU as exported | retrieved | IoU left Z-up | retrieved |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
