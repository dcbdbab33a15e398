"""SIGKILL mid-run, then a re-run: no duplicate rows and the same selection; and the CLI through the installed
entry point (.venv/bin/mvdata), including bad input (exit 2, one line).

Each `mvdata filter` subprocess pays torch + open_clip imports (seconds on a loaded 2-core machine), so the
killed and resumed runs double as the test of the CLI flags; cheap commands run in-process through typer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mvforge import config as cfglib
from mvforge.cli.mvdata import app
from mvforge.errors import UserError
from mvforge.filter.config import FilterConfig, SelectConfig, TextConfig, ViewsConfig
from mvforge.filter.pipeline import run_filter
from mvforge.filter.tiny import TINY_NAME, WEIGHTS
from tests.fixtures.synthetic import write_synthetic_render_dir

N_KILL = 24  # objects, two per part file (run.objects_per_part=2): the killed run is caught after 3 parts
MVDATA = str(Path(sys.executable).with_name("mvdata"))


def mvdata(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MVDATA, *args], capture_output=True, text=True, timeout=300, **kw)


def test_make_tiny_clip_and_help(tmp_path, tiny_clip):
    """make-tiny-clip writes the fixture's model bit for bit (same seed); the help names the QuickGELU rule."""
    res = CliRunner().invoke(app, ["make-tiny-clip", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"local-dir:{tmp_path}" in res.output
    for name in (WEIGHTS, "open_clip_config.json", f"{TINY_NAME}.json"):
        assert (tmp_path / name).read_bytes() == (tiny_clip / name).read_bytes(), name
    help_text = CliRunner().invoke(app, ["filter", "--help"], terminal_width=200).output
    assert "-quickgelu" in help_text and "--keep-fraction" in help_text


def test_sigkill_mid_run_then_resume(tmp_path, make_cfg, tiny_clip):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, N_KILL, views=4, resolution=32)
    reference = tmp_path / "reference"
    ref_cfg = make_cfg(views=ViewsConfig(count=2), select=SelectConfig(keep_fraction=0.5, agg="max"))
    run_filter(renders, reference, ref_cfg, progress=False)

    # The weights as a checkpoint file + registered config (the local-dir: path is covered in test_clip.py).
    out = tmp_path / "killed"
    args = [
        "filter", str(renders), "--out", str(out), "--engine", "local", "--score-views", "2", "--agg", "max",
        "--clip-model", TINY_NAME, "--clip-model-config", str(tiny_clip / f"{TINY_NAME}.json"),
        "--clip-pretrained", str(tiny_clip / WEIGHTS), "--keep-fraction", "0.5", "--set", "run.objects_per_batch=1", "--set", "run.objects_per_part=2",
    ]  # fmt: skip
    proc = subprocess.Popen([MVDATA, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / "parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    part_paths = sorted(parts.glob("part-*.parquet"))
    scored_before = len(part_paths)
    assert 3 <= scored_before < N_KILL // 2 and not (out / "summary.json").exists()
    # Batches of one object are grouped two to a part (`run.objects_per_part`): no file per batch at scale.
    assert {pq.read_metadata(p).num_rows for p in part_paths} == {2}

    resumed = mvdata(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "mvdata filter" in resumed.stderr and "kept" in resumed.stderr  # the summary table (rich, stderr)
    for name in ("scores.parquet", "selection.parquet", "report.html", "config.toml", "summary.json"):
        assert (out / name).is_file(), name
    summary = pd.read_json(out / "summary.json", typ="series")
    assert (
        summary["scored_this_run"] == N_KILL - 2 * scored_before
    )  # resume skipped what the killed run stored
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == N_KILL and scores["uid"].is_unique
    assert not list(parts.glob("*"))  # merged parts are removed; no torn temporaries left
    assert scores["views"].map(list).tolist() == [[0, 2]] * N_KILL  # --score-views 2 of 4
    assert (scores["aggregate"] == scores["cosines"].map(max)).all()  # --agg max
    expected = pd.read_parquet(reference / "selection.parquet")
    got = pd.read_parquet(out / "selection.parquet")
    assert got["uid"].tolist() == expected["uid"].tolist()
    assert got["kept"].tolist() == expected["kept"].tolist()
    pd.testing.assert_series_equal(got["score"], expected["score"], atol=1e-6, rtol=0)

    # The flags landed in the resolved config, which round-trips through --config; another scoring key
    # (here only the template) is refused in the same directory.
    cfg = cfglib.load(FilterConfig, out / "config.toml")
    assert cfg.select.keep_fraction == 0.5 and cfg.run.objects_per_batch == 1 and cfg.views.count == 2
    with pytest.raises(
        UserError,
        match=r"other settings \(text.template was 'a 3D model of \{\}', now 'a photo of \{\}'\); "
        r"pass the same model flags",
    ):
        run_filter(renders, out, replace(cfg, text=TextConfig(template="a photo of {}")), progress=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keep-fraction", "0.5", "--clip-threshold", "0.2"], "exactly one of"),
        (["--keep-fraction", "0.5", "--agg", "topk:0"], "topk:K"),
        (["--keep-fraction", "0.5", "--set", "select.nope=1"], "unknown config key select.nope"),
    ],
    ids=["both-thresholds", "bad-agg", "unknown-key"],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, extra, message):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 1, views=2, resolution=16)
    res = mvdata("filter", str(renders), "--out", str(tmp_path / "f"), "--engine", "local", *extra)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


def test_cli_missing_render_dir(tmp_path):
    res = mvdata("filter", str(tmp_path / "nope"), "--out", str(tmp_path / "f"), "--keep-fraction", "0.5")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "mvdata render" in res.stderr
