"""Must-show 4 (SIGKILL mid-run, re-run: no duplicate rows, the same selection) and the CLI through the installed
entry point (.venv/bin/mvdata), including bad input (exit 2, one line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mvforge import config as cfglib
from mvforge.errors import UserError
from mvforge.filter.config import FilterConfig, TextConfig
from mvforge.filter.pipeline import run_filter
from mvforge.render.synthetic import write_synthetic_render_dir

N_KILL = 40  # objects, one part file each: the killed run is caught after 3 parts
MVDATA = str(Path(sys.executable).with_name("mvdata"))


def mvdata(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MVDATA, *args], capture_output=True, text=True, timeout=300, **kw)


def test_sigkill_mid_run_then_resume(tmp_path, make_cfg, tiny_clip):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, N_KILL, views=2, resolution=32)
    reference = tmp_path / "reference"
    run_filter(renders, reference, make_cfg(), progress=False)

    out = tmp_path / "killed"
    args = [
        "filter", str(renders), "--out", str(out), "--pretrained", f"local-dir:{tiny_clip}",
        "--keep-fraction", "0.5", "--engine", "local", "--set", "run.objects_per_batch=1",
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
    scored_before = len(list(parts.glob("part-*.parquet")))
    assert 3 <= scored_before < N_KILL and not (out / "summary.json").exists()

    resumed = mvdata(*args)
    assert resumed.returncode == 0, resumed.stderr
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["scored_this_run"] == N_KILL - scored_before  # resume skipped what the killed run stored
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == N_KILL and scores["uid"].is_unique
    assert not list(parts.glob("*"))  # merged parts are removed; no torn temporaries left
    expected = pd.read_parquet(reference / "selection.parquet")
    got = pd.read_parquet(out / "selection.parquet")
    assert got["uid"].tolist() == expected["uid"].tolist()
    assert got["kept"].tolist() == expected["kept"].tolist()
    pd.testing.assert_series_equal(got["score"], expected["score"], atol=1e-6, rtol=0)

    # The resolved config round-trips through --config, and a mismatched scoring key is refused.
    cfg = cfglib.load(FilterConfig, out / "config.toml")
    assert cfg.select.keep_fraction == 0.5 and cfg.run.objects_per_batch == 1
    with pytest.raises(UserError, match="other settings .*text"):
        run_filter(renders, out, make_cfg(text=TextConfig(template="a photo of {}")), progress=False)


def test_cli_make_tiny_clip_and_filter(tmp_path):
    model_dir = tmp_path / "tiny"
    made = mvdata("make-tiny-clip", "--out", str(model_dir))
    assert made.returncode == 0, made.stderr
    assert f"local-dir:{model_dir}" in made.stdout
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 4, views=4, resolution=32)
    out = tmp_path / "filter"
    run = mvdata(
        "filter", str(renders), "--out", str(out), "--engine", "local", "--views", "2", "--agg", "max",
        "--model", "mvforge-tiny-clip", "--model-config", str(model_dir / "mvforge-tiny-clip.json"),
        "--pretrained", str(model_dir / "open_clip_model.safetensors"), "--clip-threshold", "-1",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "mvdata filter" in run.stderr and "kept" in run.stderr  # the summary table (rich, on stderr)
    for name in ("scores.parquet", "selection.parquet", "report.html", "config.toml", "summary.json"):
        assert (out / name).is_file(), name
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["views"].map(list).tolist() == [[0, 2]] * 4
    assert (scores["aggregate"] == scores["cosines"].map(max)).all()
    assert pd.read_parquet(out / "selection.parquet")["kept"].all()  # every cosine is >= -1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keep-fraction", "0.5", "--clip-threshold", "0.2"], "exactly one of"),
        (["--keep-fraction", "0.5", "--model", "ViT-B-32", "--pretrained", "openai"], "ViT-B-32-quickgelu"),
        (["--keep-fraction", "0.5", "--set", "select.nope=1"], "unknown config key select.nope"),
    ],
    ids=["both-thresholds", "openai-without-quickgelu", "unknown-key"],
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
