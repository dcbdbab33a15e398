"""scripts/demo_check.py: `make demo`'s closing table reads the known-answer results it names, in the format
`mvtrain eval --known-answer` writes, and says which measures fell below their 3-seed floors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UIDS = (
    "demo-bench", "demo-chair", "demo-desk", "demo-donut", "demo-kettle", "demo-mug", "demo-mushroom",
    "demo-rocket", "demo-snowman", "demo-table-lamp", "demo-traffic-cone",
)  # fmt: skip


def _write(path: Path, captions: list[dict]) -> None:
    path.mkdir(parents=True)
    (path / "known_answer.json").write_text(json.dumps({"captions": captions, "summary": {}}))


def test_the_closing_table_reads_every_result_and_flags_a_regression(tmp_path):
    shifted = {"90": {"views_nearer_at_true_camera": 3}, "180": {"views_nearer_at_true_camera": 2}}
    trained = [
        {"uid": u, "retrieved": u if i < 9 else "demo-mug", "views": [0, 4, 8, 12], "shifted": shifted}
        for i, u in enumerate(UIDS)
    ]
    _write(tmp_path / "eval", trained)
    sds = [
        {"uid": "demo-traffic-cone", "retrieved": "demo-traffic-cone", "iou": 0.85},
        {"uid": "demo-chair", "retrieved": "demo-mug", "iou": 0.31},
    ]
    _write(tmp_path / "eval-sds", sds)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_check.py"), str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines()[1:]}
    assert "    9  (target 10" in lines["captions retrieving their own object, held-out orbit (of 11)"]
    assert "    5  (target 10" in lines["non-symmetric shifts further from the truth, held-out orbit (of 10)"]
    assert "meets the target" in lines["SDS cone IoU"]
    assert "0.31" in lines["SDS chair IoU"] and "BELOW THE 3-SEED FLOOR" in lines["SDS chair IoU"]
    assert lines["SDS kettle IoU"].endswith("not measured")
    assert lines["other captions kept after DreamBooth (of 11)"].endswith("not measured")


def test_a_missing_output_directory_is_one_line_naming_the_fix(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_check.py"), str(tmp_path / "nope")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"error: {tmp_path / 'nope'} is not a directory; pass the directory `make demo` wrote (demo-out)"
    )
