"""The Ray Data path (actor pool, one row per object) gives the in-process path's scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mvforge.filter.config import RunConfig
from mvforge.filter.pipeline import run_filter
from mvforge.formats import renders as layout
from tests.fixtures.synthetic import write_synthetic_object, write_synthetic_render_dir

# Ray Data's own DataContext warns about its deprecated fields when the context is shipped to workers.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def test_ray_data_equals_in_process(tmp_path, make_cfg, ray_local):
    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 7, views=6, resolution=32)
    write_synthetic_object(renders, "gate-empty", "nothing", views=6, resolution=32, kind="empty")
    write_synthetic_object(renders, "bad-view", "a thing", views=6, resolution=32)
    (layout.object_dir(renders, "bad-view") / "003.png").write_bytes(b"\x89PNG broken")

    local = run_filter(renders, tmp_path / "local", make_cfg(), progress=False)
    # Two actors and 2-object batches: rows come back in any order, from both model copies.
    ray_cfg = make_cfg(run=RunConfig(engine="ray", workers=2, objects_per_batch=2, cpus_per_worker=1.0))
    remote = run_filter(renders, tmp_path / "ray", ray_cfg, progress=False)
    assert remote["engine"] == "ray" and remote["scored_this_run"] == local["scored_this_run"] == 9

    a = pd.read_parquet(tmp_path / "local" / "scores.parquet")
    b = pd.read_parquet(tmp_path / "ray" / "scores.parquet")
    assert a["uid"].tolist() == b["uid"].tolist() and b["uid"].is_unique
    for col in ("text", "reason", "model", "pretrained", "template"):
        assert a[col].tolist() == b[col].tolist(), col
    for ca, cb in zip(a["cosines"], b["cosines"], strict=True):
        np.testing.assert_allclose(cb, ca, atol=1e-6)
    np.testing.assert_allclose(b["aggregate"], a["aggregate"], atol=1e-6)
    assert (a.filter(like="gate_") == b.filter(like="gate_")).all().all()
    sa = pd.read_parquet(tmp_path / "local" / "selection.parquet")
    sb = pd.read_parquet(tmp_path / "ray" / "selection.parquet")
    assert sa["kept"].tolist() == sb["kept"].tolist()
    assert sa["reason"].tolist() == sb["reason"].tolist()
    assert b.set_index("uid").loc["bad-view", "reason"] == "unreadable_view"
