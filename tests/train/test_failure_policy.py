"""Failure policy of `mvtrain fit` (docs/train.md): SIGTERM writes a checkpoint and exits 143, then the run resumes;
non-finite steps are skipped and counted, and N in a row stop the run with a one-line error."""

from __future__ import annotations

import pytest

from mvforge.train.config import OptimConfig
from mvforge.train.loop import FAULT_ENV, NonFiniteLoss, Preempted, fit, latest_checkpoint


def test_sigterm_checkpoints_exits_143_and_the_run_resumes(
    make_fit_config, tiny_sd, shards_3d, tmp_path, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, "sigterm:0:1")  # rank 0 sends itself SIGTERM after step 1 (fires once)
    cfg = make_fit_config(tiny_sd, shards_3d, tmp_path / "run", max_steps=2, checkpoint_every=100)
    with pytest.raises(Preempted) as e:
        fit(cfg)
    assert e.value.code == 143 and e.value.step == 1
    assert latest_checkpoint(tmp_path / "run").name == "step-000001"
    assert (latest_checkpoint(tmp_path / "run") / "COMMITTED").is_file()
    assert [r["step"] for r in fit(cfg)] == [2]


def test_nonfinite_steps_stop_the_run_with_a_clear_error(make_fit_config, tiny_sd, shards_3d, tmp_path):
    # An absurd LR blows the weights up at step 1; from step 2 on the loss and gradients are not finite.
    optim = OptimConfig(lr=1e30, lr_scheduler="constant", grad_clip_norm=0.0)
    cfg = make_fit_config(
        tiny_sd, shards_3d, tmp_path / "run", max_steps=4, optim=optim, max_nonfinite_steps=2
    )
    with pytest.raises(NonFiniteLoss) as e:
        fit(cfg)
    msg = str(e.value)
    assert "2 steps in a row" in msg and "optim.lr" in msg and "\n" not in msg
