"""Preemption of `mvtrain fit --workers 1` (Ray Train): SIGTERM to the driver leaves a checkpoint at the step
reached and exits 143, as the in-process fit does (docs/reliability.md)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvforge import config as config_mod
from mvforge.train.checkpoint import check_checkpoint
from mvforge.train.loop import checkpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigterm_to_a_ray_train_fit_checkpoints_and_exits_143(make_fit_config, tiny_sd, shards_3d, tmp_path):
    out = tmp_path / "run"
    cfg = make_fit_config(tiny_sd, shards_3d, out, max_steps=200, checkpoint_every=1000, ema_decay=0.0)
    cfg_file = tmp_path / "fit.toml"
    cfg_file.write_text(config_mod.to_toml(cfg))
    mvtrain = str(Path(sys.executable).with_name("mvtrain"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [mvtrain, "fit", "--config", str(cfg_file), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        metrics = out / "metrics.csv"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:  # header + step 1
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)  # the driver only, as a scheduler's first signal
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    (ckpt,) = checkpoints(out)
    check_checkpoint(ckpt)
    assert (ckpt / "COMMITTED").is_file()
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    step = int(ckpt.name.split("-")[1])
    assert 1 <= step < 200 and int(rows[-1]["step"]) == step  # the step reached, not an older one
    assert "SIGTERM: checkpoint" in err and not (out / ".stop").exists()
