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
    assert done.returncode == 2  # bad arguments: 2, as for every mvforge command
    assert (
        done.stderr.strip()
        == f"error: {tmp_path / 'nope'} does not exist; pass the directory `make demo` wrote (demo-out)"
    )
    script = [sys.executable, str(ROOT / "scripts" / "demo_check.py")]
    (tmp_path / "a-file").write_text("x")
    done = subprocess.run([*script, str(tmp_path / "a-file")], capture_output=True, text=True)
    assert done.returncode == 2 and "a-file is not a directory" in done.stderr
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage: ")
    done = subprocess.run([*script, "-h"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: ")


def test_the_pictures_tile_the_truth_above_each_result_and_a_missing_strip_is_one_line(tmp_path):
    """scripts/demo_pictures.py: the README's pictures from the known-answer strips (4 rows of 4 views)."""
    from PIL import Image

    for sub, uids in (("eval", UIDS), ("eval-sds", ("demo-traffic-cone", "demo-chair", "demo-kettle"))):
        (tmp_path / sub / "known_answer").mkdir(parents=True)
        for i, uid in enumerate(uids):
            strip = Image.new("RGB", (4 * 32, 4 * 32), (i * 20, 0, 0))
            strip.paste((0, 255, 0), (0, 32, 128, 64))  # the result's row
            strip.paste((0, 0, 255), (0, 64, 128, 128))  # the shifted rows: left out of the picture
            strip.save(tmp_path / sub / "known_answer" / f"{uid}.png")
    script = [
        sys.executable,
        str(ROOT / "scripts" / "demo_pictures.py"),
        str(tmp_path),
        str(tmp_path / "img"),
    ]
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    world = Image.open(tmp_path / "img" / "demo-world.png").convert("RGB")
    assert world.size == (4 * 256 + 3 * 8, 2 * 128 + 8)  # 8 captions, 4 to a row, 2x upscaled
    assert world.getpixel((10, 70)) == (0, 255, 0) and (0, 0, 255) not in {c for _, c in world.getcolors()}
    assert Image.open(tmp_path / "img" / "demo-sds.png").size == (256, 3 * 128 + 2 * 8)
    assert subprocess.run([*script[:2], str(tmp_path / "nope"), str(tmp_path / "x")]).returncode == 2
    (tmp_path / "eval-sds" / "known_answer" / "demo-chair.png").unlink()
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 2 and "demo-chair.png is missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_output_with_no_result_is_an_error_not_a_pass(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_check.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "holds no known-answer result" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_damaged_result_is_one_line_and_no_shifted_cameras_are_not_measured(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "demo_check.py"), str(tmp_path)]
    (tmp_path / "eval").mkdir()
    shifted = {"90": {"views_nearer_at_true_camera": 4}}
    for damaged, says in (
        ("{}", "is unreadable or not a known-answer result"),
        ("not json", "is unreadable or not a known-answer result"),
        ('{"captions": [{"uid": "demo-chair"}]}', "is damaged"),
        (json.dumps({"captions": [{"uid": "demo-mug", "retrieved": "demo-mug", "shifted": None}]}), "is damaged"),
        (json.dumps({"captions": [{"uid": "demo-mug", "retrieved": "demo-mug", "views": [], "shifted": shifted}]}),
         "is damaged"),  # no views: it must not count as further
    ):  # fmt: skip
        (tmp_path / "eval" / "known_answer.json").write_text(damaged)
        done = subprocess.run(script, capture_output=True, text=True)
        assert done.returncode == 2 and says in done.stderr, (damaged, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "eval" / "known_answer.json").unlink()
    (tmp_path / "eval").rmdir()
    # An evaluation run with shifts_deg=[] sampled no shifted cameras: the measure is absent, not 0.
    _write(tmp_path / "eval", [{"uid": u, "retrieved": u, "views": [0], "shifted": {}} for u in UIDS])
    out = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if "shifts further" in line]
    assert line.endswith("not measured") and "FLOOR" not in line
