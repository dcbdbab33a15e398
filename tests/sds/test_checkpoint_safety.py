"""A checkpoint is data, never code: an SDS checkpoint holding a pickled payload is refused with one line and
the payload does not run (docs/reliability.md, threat model)."""

from __future__ import annotations

import io
import os

import pytest
import torch

from mvforge.errors import UserError
from mvforge.sds.loop import build_state, load_checkpoint, save_checkpoint
from tests.sds.conftest import tiny_sds_config


class _Payload:
    """Unpickling this calls ``os.system``: the marker file appears iff the loader ran pickled code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_in_an_sds_checkpoint_is_refused_and_never_runs(tmp_path):
    cfg = tiny_sds_config(tmp_path / "no-model", tmp_path / "out")
    state = build_state(cfg, torch.device("cpu"))
    run_dir = tmp_path / "run"
    good = save_checkpoint(run_dir, state, 2, cfg)
    assert load_checkpoint(good, build_state(cfg, torch.device("cpu"))) == 2  # the real format loads

    ckpt = torch.load(good, weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["seconds"] = _Payload(str(marker))
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    bad = run_dir / "checkpoints" / "step-000004.pt"
    bad.write_bytes(buf.getvalue())

    with pytest.raises(UserError, match="step-000004.pt was refused"):
        load_checkpoint(bad, build_state(cfg, torch.device("cpu")))
    assert not marker.exists()


def test_a_truncated_newest_checkpoint_is_passed_over_in_one_line_and_the_run_resumes_from_the_one_before(
    tiny_mv, tmp_path, capsys
):
    import csv

    from mvforge.sds.loop import checkpoints, run_sds

    def read_losses(run_dir):
        with open(run_dir / "metrics.csv", newline="") as f:
            return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}

    cfg = tiny_sds_config(
        tiny_mv, tmp_path / "out", max_steps=2, checkpoint_every=1, export=False, snapshot_every=0
    )
    run_dir = run_sds(cfg, show_progress=False)
    losses = read_losses(run_dir)
    step1, step2 = checkpoints(run_dir)
    step2.write_bytes(step2.read_bytes()[:1000])  # cut short: a full disk, a killed copy
    (run_dir / "summary.json").unlink()  # as if the run died right after writing it
    capsys.readouterr()

    run_sds(cfg, show_progress=False)
    err = capsys.readouterr().err
    assert f"warning: skipping damaged checkpoint ({step2}: " in err and f"resuming from {step1}" in err
    assert read_losses(run_dir) == losses and len(losses) == 2  # step 2 redone
    assert load_checkpoint(step2, build_state(cfg, torch.device("cpu"))) == 2  # rewritten whole
