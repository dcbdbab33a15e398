"""Threshold and keep-fraction semantics, aggregates, and re-selection without re-scoring."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mvforge.errors import UserError
from mvforge.filter.config import FilterConfig, GatesConfig, SelectConfig, validate
from mvforge.filter.pipeline import run_filter
from mvforge.filter.select import aggregate, annotate, select
from tests.fixtures.synthetic import write_synthetic_render_dir


def scores_frame(cosines: list[list[float]], reasons: list[str] | None = None) -> pd.DataFrame:
    n = len(cosines)
    ok = [
        [0.3] * len(c) for c in cosines
    ]  # coverage 30%, nothing on the border, colourful: passes every gate
    return pd.DataFrame(
        {
            "uid": [f"u{i}" for i in range(n)],
            "reason": reasons or [""] * n,
            "cosines": cosines,
            "view_coverage": ok,
            "view_border": [[0.0] * len(c) for c in cosines],
            "view_color_std": ok,
        }
    )


def cfg(**select) -> FilterConfig:
    return FilterConfig(select=SelectConfig(**select))


def test_aggregates():
    c = [[0.1, 0.4, 0.2, 0.3], []]
    assert aggregate(c, "mean")[0] == pytest.approx(0.25)
    assert aggregate(c, "median")[0] == pytest.approx(0.25)
    assert aggregate(c, "max")[0] == pytest.approx(0.4)
    assert aggregate(c, "topk:2")[0] == pytest.approx(0.35)
    assert math.isnan(aggregate(c, "mean")[1])
    with pytest.raises(UserError, match="topk:K"):
        aggregate(c, "topk:0")


def test_clip_threshold_keeps_scores_at_or_above():
    df = annotate(scores_frame([[0.1], [0.2], [0.3], [0.2]]), cfg(clip_threshold=0.2))
    sel, thr = select(df, cfg(clip_threshold=0.2))
    assert thr == 0.2
    assert sel["kept"].tolist() == [False, True, True, True]
    assert sel["reason"].tolist() == ["below_threshold", None, None, None]
    assert (sel["threshold"] == 0.2).all()


def test_keep_fraction_is_datacomp_style_and_reports_threshold():
    scores = [0.05, 0.31, 0.12, 0.27, 0.18, 0.22, 0.09, 0.15, 0.29, 0.01]
    frame = scores_frame([[s] for s in scores], reasons=[""] * 9 + ["empty_text"])
    df = annotate(frame, cfg(keep_fraction=0.5))
    sel, thr = select(df, cfg(keep_fraction=0.5))
    eligible = sorted(scores[:9], reverse=True)  # the unscorable object is not part of the pool
    k = math.ceil(0.5 * 9)
    assert thr == pytest.approx(eligible[k - 1])
    assert int(sel["kept"].sum()) == k
    assert set(sel.loc[sel["kept"], "score"]) == set(eligible[:k])
    assert sel["reason"].iloc[-1] == "empty_text"
    # The reported threshold, given back as --clip-threshold, reproduces the same selection.
    again, _ = select(df, cfg(clip_threshold=thr))
    assert again["kept"].tolist() == sel["kept"].tolist()
    none, thr0 = select(df, cfg(keep_fraction=0.0))
    assert not none["kept"].any() and thr0 == math.inf
    every, _ = select(df, cfg(keep_fraction=1.0))
    assert every["kept"].sum() == 9


def test_keep_fraction_with_all_scores_equal_keeps_the_ties():
    """Every object ties at the threshold: all are kept, so the reported threshold reproduces the selection."""
    df = annotate(scores_frame([[0.25, 0.25]] * 6), cfg(keep_fraction=0.5))
    sel, thr = select(df, cfg(keep_fraction=0.5))
    assert thr == pytest.approx(0.25) and sel["kept"].all()
    again, _ = select(df, cfg(clip_threshold=thr))
    assert again["kept"].all()


def test_nan_scores_are_a_reason_not_the_threshold():
    """A NaN aggregate sorts first under a descending sort: it must neither become the threshold nor be kept."""
    frame = scores_frame([[0.1], [float("nan")], [0.3], [0.2], []])
    for c in (cfg(keep_fraction=0.5), cfg(clip_threshold=0.15), cfg(keep_fraction=0.5, agg="max")):
        sel, thr = select(annotate(frame, c), c)
        assert sel["reason"].tolist() == [
            "below_threshold",
            "non_finite_score",
            None,
            None,
            "non_finite_score",
        ]
        assert math.isfinite(thr)
    assert select(annotate(frame, cfg(keep_fraction=0.5)), cfg(keep_fraction=0.5))[1] == pytest.approx(0.2)


def test_gates_drop_before_the_fraction_is_taken():
    frame = scores_frame([[0.9], [0.5], [0.4], [0.3]])
    frame.at[0, "view_coverage"] = [0.0]  # the best score is an empty render
    c = cfg(keep_fraction=0.5)
    sel, thr = select(annotate(frame, c), c)
    # ceil(0.5 x 3 eligible) = 2 kept: the empty render neither counts in the pool nor takes a place.
    assert sel["reason"].tolist() == ["empty_render", None, None, "below_threshold"]
    assert thr == pytest.approx(0.4)
    off = FilterConfig(select=SelectConfig(keep_fraction=0.5), gates=GatesConfig(enabled=False))
    sel, _ = select(annotate(frame, off), off)
    assert sel["kept"].tolist() == [True, True, False, False]


def test_selection_settings_are_validated():
    with pytest.raises(UserError, match="exactly one"):
        validate(cfg())
    with pytest.raises(UserError, match="exactly one"):
        validate(cfg(clip_threshold=0.2, keep_fraction=0.5))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        validate(cfg(keep_fraction=1.5))
    with pytest.raises(UserError, match="topk:9"):
        validate(cfg(keep_fraction=0.5, agg="topk:9"))


def test_new_threshold_reselects_without_rescoring(make_cfg, tiny_clip, tmp_path):
    import shutil

    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 6, views=4, resolution=32)
    out = tmp_path / "filter"
    # A run that fails before scoring (weights not found) must not bind the directory to its settings.
    with pytest.raises(UserError, match="neither a file nor a tag"):
        run_filter(
            renders, out, make_cfg(model=replace(make_cfg().model, pretrained="nope.pt")), progress=False
        )
    first = run_filter(renders, out, make_cfg(), progress=False)
    assert first["scored_this_run"] == 6 and first["kept"] == 3
    before = pd.read_parquet(out / "scores.parquet")
    # Without the weights a re-score would fail: re-selection must not load the model at all.
    moved = tmp_path / "moved"
    shutil.move(tiny_clip, moved)
    try:
        c = make_cfg(select=SelectConfig(clip_threshold=float(np.median(before["aggregate"]))))
        second = run_filter(renders, out, c, progress=False)
    finally:
        shutil.move(moved, tiny_clip)
    assert second["scored_this_run"] == 0
    after = pd.read_parquet(out / "scores.parquet")
    assert [list(c) for c in after["cosines"]] == [list(c) for c in before["cosines"]]
    sel = pd.read_parquet(out / "selection.parquet")
    assert sel["kept"].tolist() == (after["aggregate"] >= np.median(before["aggregate"])).tolist()
