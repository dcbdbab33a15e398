"""`mvtrain fit --workers 1`: the same loop under Ray Train's TorchTrainer (real local Ray, CPU)."""

from __future__ import annotations

import csv

import pytest

from mvforge.train.loop import fit, latest_checkpoint
from mvforge.train.ray_fit import fit_with_ray


@pytest.mark.slow
def test_ray_train_one_worker_matches_in_process(make_fit_config, tiny_sd, shards_3d, tmp_path):
    import ray

    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    try:
        cfg = make_fit_config(tiny_sd, shards_3d, tmp_path / "ray-run", max_steps=2)
        result = fit_with_ray(cfg, workers=1)
    finally:
        ray.shutdown()
    assert result.error is None
    assert result.checkpoint is not None  # reported through ray.train.report
    assert latest_checkpoint(tmp_path / "ray-run").name == "step-000002"
    rows = list(csv.DictReader((tmp_path / "ray-run" / "metrics.csv").read_text().splitlines()))
    here = fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "local", max_steps=2))
    # Same seeds, same data order: the Ray worker computes the same losses (thread counts may differ, so
    # float reductions may differ in the last bits).
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in here], rel=1e-4)
