"""`mvtrain fit --workers 1`: the same loop under Ray Train's TorchTrainer (real local Ray, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mvforge.errors import UserError
from mvforge.train.loop import fit, latest_checkpoint
from mvforge.train.ray_fit import POINTER, check_cluster_size, fit_with_ray


@pytest.mark.slow
def test_ray_train_one_worker_matches_in_process(make_fit_config, tiny_sd, shards_3d, tmp_path, capsys):
    import ray

    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    try:
        cfg = make_fit_config(tiny_sd, shards_3d, tmp_path / "ray-run", max_steps=2)
        result = fit_with_ray(cfg, workers=1)
        # A cluster too small for the workers: Ray Train would wait without a word. A Ray that cannot grow is
        # refused; one that may (an autoscaler) is waited on, and the wait said.
        with pytest.raises(
            UserError, match=r"--workers 3 needs 3 CPUs \(one per worker\) and .* has 2; pass --workers 2"
        ):
            check_cluster_size(3, use_gpu=False, local=True)
        check_cluster_size(3, use_gpu=False, local=False)
        assert "has 2 now; Ray Train waits until it has them" in capsys.readouterr().err
        check_cluster_size(2, use_gpu=False, local=True)
    finally:
        ray.shutdown()
    assert result.error is None
    assert result.metrics["step"] == 2  # reported through ray.train.report
    # Ray's own results live inside the run directory, nothing beside it; a checkpoint is reported as a
    # pointer to the run's own, never copied (Ray would keep every copy).
    assert (tmp_path / "ray-run" / "ray_results").is_dir() and not (tmp_path / "ray_results").exists()
    with result.checkpoint.as_directory() as pointer:
        target = json.loads((Path(pointer) / POINTER).read_text())["checkpoint"]
    assert Path(target) == (tmp_path / "ray-run" / "checkpoints" / "step-000002").resolve()
    assert not [p for p in (tmp_path / "ray-run" / "ray_results").rglob("*") if p.name == "unet"]
    assert latest_checkpoint(tmp_path / "ray-run").name == "step-000002"
    rows = list(csv.DictReader((tmp_path / "ray-run" / "metrics.csv").read_text().splitlines()))
    here = fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "local", max_steps=2))
    # Same seeds, same data order: the Ray worker computes the same losses (thread counts may differ, so
    # float reductions may differ in the last bits).
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in here], rel=1e-4)


def test_more_workers_than_a_local_ray_has_cpus_is_one_line_before_training(tiny_sd, shards_3d, tmp_path):
    """`mvtrain fit --workers 64` on this machine (a local Ray of its cores): refused in one line naming the
    fix, instead of Ray Train waiting forever for CPUs that never come; nothing is trained."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    mvtrain = Path(sys.executable).with_name("mvtrain")
    args = ["fit", "--model", str(tiny_sd), "--shards", str(shards_3d), "--out", str(tmp_path / "run")]
    res = subprocess.run(
        [str(mvtrain), *args, "--workers", "64", "--max-steps", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip()
    assert "--workers 64 needs 64 CPUs" in line and "pass --workers" in line and "\n" not in line
    assert latest_checkpoint(tmp_path / "run") is None
