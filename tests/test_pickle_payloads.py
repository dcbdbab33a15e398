"""Checkpoints and weights are data, never code: every loader mvforge runs on a file refuses a pickle that needs
code to load, and the payload never runs (docs/reliability.md, threat model). The SDS checkpoint and the
converter have their own tests (tests/sds/test_checkpoint_safety.py, tests/models/test_convert.py)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch


class _Payload:
    """Unpickling this calls ``os.system``: the marker file appears iff a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poisoned(path, marker):
    torch.save({"weight": torch.zeros(2), "note": _Payload(marker)}, path)
    return path


def test_fit_training_state(tmp_path):
    from mvforge.train.checkpoint import load_training_state

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    for name in ("optimizer.pt", "lr_scheduler.pt", "scaler.pt"):
        _poisoned(ckpt / name, marker)
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.ConstantLR(optimizer)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_training_state(ckpt, torch.device("cpu"), optimizer, sched, None)
    assert not marker.exists()


def test_inception_weights_of_eval(tmp_path):
    pytest.importorskip("torchvision")
    from mvforge.errors import UserError
    from mvforge.eval.extractors import InceptionFeatures

    marker = tmp_path / "pwned"
    with pytest.raises(UserError, match="is not torchvision inception_v3 weights"):
        InceptionFeatures(_poisoned(tmp_path / "inception.pth", marker))
    assert not marker.exists()


def test_open_clip_weights_of_filter(tmp_path):
    from mvforge.errors import UserError
    from mvforge.filter.clip import model_spec
    from mvforge.filter.config import ClipModelConfig, FilterConfig

    marker = tmp_path / "pwned"
    weights = _poisoned(tmp_path / "clip.pt", marker)
    with pytest.raises(UserError, match="not a readable open_clip checkpoint"):
        model_spec(FilterConfig(model=ClipModelConfig(pretrained=str(weights))))
    assert not marker.exists()


def test_a_pickled_bin_in_a_model_directory(tiny_mv, tmp_path):
    from mvforge.models.pipeline import MultiViewDiffusion

    marker = tmp_path / "pwned"
    model = tmp_path / "model"
    shutil.copytree(tiny_mv, model)
    for f in (model / "unet").glob("*.safetensors"):
        f.unlink()
    _poisoned(model / "unet" / "diffusion_pytorch_model.bin", marker)  # diffusers' fallback format
    with pytest.raises(Exception):  # noqa: B017 (diffusers' own error; what matters is that nothing ran)
        MultiViewDiffusion.from_pretrained(tiny_mv, unet_from=model)  # fit and dreambooth resume this way
    assert not marker.exists()
