"""A damaged newest checkpoint (truncated weights, a pickled optimizer state) is passed over in one line and the
run resumes from the newest intact one; a pickle never runs; a damaged model directory is one line
(docs/reliability.md)."""

from __future__ import annotations

import io
import os
import shutil

import pytest
import torch

from mvforge import rundir
from mvforge.errors import UserError
from mvforge.train.checkpoint import check_checkpoint
from mvforge.train.loop import checkpoints, fit

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


class _Payload:
    """Unpickling this calls ``os.system``: the marker file appears iff a loader ran pickled code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_fit_resumes_from_the_newest_intact_checkpoint_and_a_pickle_never_runs(
    make_fit_config, tiny_sd, shards_3d, tmp_path, capsys
):
    cfg = make_fit_config(
        tiny_sd, shards_3d, tmp_path / "run", max_steps=2, checkpoint_every=1, ema_decay=0.0
    )
    first = fit(cfg)
    step1, step2 = checkpoints(tmp_path / "run")
    _truncate(step2 / WEIGHTS)  # a copy cut short (a full disk, a killed rsync)
    capsys.readouterr()

    again = fit(cfg)
    err = capsys.readouterr().err
    assert [r["step"] for r in again] == [2]  # resumed from step 1, not from scratch, not from step 2
    assert again[0]["loss"] == first[1]["loss"]  # the same step 2 (exact resume)
    assert f"skipping damaged checkpoint ({step2 / WEIGHTS}" in err and f"resuming from {step1}" in err
    check_checkpoint(step2)  # rewritten whole

    # A pickled optimizer state: refused by the check (weights_only), passed over, and its payload never runs.
    forged = step2.with_name("step-000003")
    shutil.copytree(step2, forged)
    marker = tmp_path / "pwned"
    state = torch.load(forged / "optimizer.pt", weights_only=True)
    state["param_groups"][0]["note"] = _Payload(str(marker))
    buf = io.BytesIO()
    torch.save(state, buf)
    (forged / "optimizer.pt").write_bytes(buf.getvalue())
    warned: list[str] = []
    assert rundir.newest_intact(checkpoints(tmp_path / "run"), check_checkpoint, warned.append) == step2
    assert len(warned) == 1 and f"({forged / 'optimizer.pt'}: holds pickled code (" in warned[0]
    with pytest.raises(UserError, match=f"no intact checkpoint in {forged.parent} .*delete the damaged"):
        rundir.newest_intact([forged], check_checkpoint)
    assert not marker.exists()


def test_a_truncated_model_file_is_one_line_naming_it(make_fit_config, tiny_sd, shards_3d, tmp_path):
    model = tmp_path / "sd"
    shutil.copytree(tiny_sd, model)
    _truncate(model / WEIGHTS, keep=0.9)
    with pytest.raises(
        UserError, match=rf"{model / WEIGHTS}: holds \d+ bytes, its header needs \d+ .*copy the"
    ):
        fit(make_fit_config(model, shards_3d, tmp_path / "run", max_steps=1))
