"""The §5.1 ablation table of the demo world (docs/benchmarks.md "Ablations"): the full model against the
variants `bench/ablation_world.sh` trained, on the known-answer eval and the SDS meshes rendered back.

    .venv/bin/python bench/ablation_table.py WORLD      # WORLD: the `make demo` output holding ablation/

Every variant, the full model included, is read from WORLD/ablation/VARIANT/{eval,eval-sds} (scored at the same
step by the script). Prints one markdown table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(path: Path) -> dict | None:
    f = path / "known_answer.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _row(name: str, sampled: dict | None, novel: dict | None, sds: dict | None) -> str:
    cells = [name]
    if sampled:
        s = sampled["summary"]
        cells += [
            f"{s['retrieved_own']}/{s['captions']}",
            s.get("views_retrieving_own", "-"),
            s.get("views_agree", "-"),
            s["shifted_cameras_further"],
            f"{s['mean_psnr_object_db']:.1f}",
        ]
    else:
        cells += ["-"] * 5
    cells.append(novel["summary"].get("views_agree", "-") if novel else "-")
    if sds:
        by_uid = {r["uid"]: r for r in sds["captions"]}
        for uid in ("demo-traffic-cone", "demo-chair", "demo-kettle"):
            r = by_uid.get(uid)
            cells.append(f"{r['iou']:.2f}" if r else "-")
        cells.append(f"{sds['summary']['retrieved_own']}/{sds['summary']['captions']}")
    else:
        cells += ["-"] * 4
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", type=Path)
    world = ap.parse_args().world
    print(
        "| model | captions retrieved | views retrieving own | captions whose views agree | shifted further "
        "| PSNR object dB | novel prompts: views agree | SDS IoU cone | SDS IoU chair | SDS IoU kettle | SDS retrieved |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant, name in (
        ("full", "full (3D attention + camera)"),
        ("no-camera", "no camera embedding"),
        ("per-image", "per-image attention"),
        ("3d-only", "3D batches only (no 2D steps)"),
    ):
        v = world / "ablation" / variant
        print(_row(name, _load(v / "eval"), _load(v / "eval-novel"), _load(v / "eval-sds")))


if __name__ == "__main__":
    main()
