"""GPU scoring (skipped without CUDA): half precision stays close to fp32 CPU, and Ray actors get the GPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mvforge.filter.clip import Scorer
from mvforge.filter.config import ClipModelConfig, RunConfig
from mvforge.filter.pipeline import run_filter
from tests.fixtures.synthetic import write_synthetic_render_dir

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_scores_match_cpu(tmp_path, make_cfg, tiny_clip, precision):
    uids = write_synthetic_render_dir(tmp_path, 3, views=4, resolution=32)
    cpu = Scorer(str(tmp_path), make_cfg(), device="cpu")({"uid": uids})
    gpu_cfg = make_cfg(model=ClipModelConfig(pretrained=f"local-dir:{tiny_clip}", precision=precision))
    gpu = Scorer(str(tmp_path), gpu_cfg, device="cuda")
    assert str(next(gpu.model.parameters()).device).startswith("cuda")
    out = gpu({"uid": uids})
    atol = 1e-4 if precision == "fp32" else 3e-2
    for a, b in zip(cpu["cosines"].to_pylist(), out["cosines"].to_pylist(), strict=True):
        np.testing.assert_allclose(b, a, atol=atol)


def test_ray_actor_on_gpu(tmp_path, make_cfg, ray_local):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 4, views=4, resolution=32)
    local = make_cfg(
        model=ClipModelConfig(pretrained=make_cfg(local_dir=True).model.pretrained, device="cpu")
    )
    run_filter(renders, tmp_path / "cpu", local, progress=False)
    ray_cfg = make_cfg(
        model=ClipModelConfig(pretrained=local.model.pretrained, precision="fp16"),
        run=RunConfig(engine="ray", workers=1, gpus_per_worker=1.0),
    )
    run_filter(renders, tmp_path / "gpu", ray_cfg, progress=False)
    a = pd.read_parquet(tmp_path / "cpu" / "scores.parquet")
    b = pd.read_parquet(tmp_path / "gpu" / "scores.parquet")
    np.testing.assert_allclose(b["aggregate"], a["aggregate"], atol=3e-2)
