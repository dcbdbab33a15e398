"""Paths of the wrong kind and outputs that would clobber another stage end in one line and exit 2 (docs/cli.md,
"errors" and "output"; these used to be tracebacks, or silently replaced a render directory's config.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mvforge.formats import renders as layout
from tests.fixtures.synthetic import write_synthetic_render_dir

BIN = Path(sys.executable).parent


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-1500:]
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_out_is_an_existing_file(tmp_path):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 2, views=2, resolution=8)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    res = subprocess.run(
        [BIN / "mvdata", "shard", renders, "--out", afile, "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "afile.txt", "directory")
    assert afile.read_text() == "x"  # nothing lost


def test_stages_refuse_to_write_into_a_render_directory(tmp_path):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 2, views=2, resolution=8)
    (renders / layout.CONFIG).write_text("resolution = 8\n")
    res = subprocess.run(
        [BIN / "mvdata", "shard", renders, "--out", renders, "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "is a render directory")
    res = subprocess.run(
        [BIN / "mvdata", "filter", renders, "--out", renders, "--keep-fraction", "0.5", "--engine", "local"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "is a render directory")
    assert (renders / layout.CONFIG).read_text() == "resolution = 8\n"


def test_fit_on_ray_checks_the_model_before_ray_starts(tmp_path):
    """A wrong --model with --workers is the same one line as without: checked before Ray starts, not a traceback
    from inside a Ray Train worker."""
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 1, views=2, resolution=8)
    res = subprocess.run(
        [BIN / "mvtrain", "fit", "--model", tmp_path / "nope", "--shards", renders, "--out", tmp_path / "run"]
        + ["--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(res, "nope")
    assert not (tmp_path / "ray_results").exists()
