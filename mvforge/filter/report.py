"""report.html: one self-contained page (inline SVG + base64 thumbnails) to judge a threshold by eye.

It shows the score histogram with the threshold, the counts per drop reason, and contact sheets of kept,
dropped and near-threshold objects (docs/design.md §2.2) — the objects a threshold change would flip.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mvforge import htmlkit
from mvforge.filter.clip import composite, read_view
from mvforge.filter.config import FilterConfig
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_text


def thumbnail_uri(root: Path, uid: str, view: int, cfg: FilterConfig) -> str | None:
    """A data: URI of one view composited on the scoring background, or None when it cannot be read."""
    try:
        obj = layout.RenderedObject(uid, layout.object_dir(root, uid))
        rgb = composite(read_view(obj.view_path(view)), cfg.views.background_rgb)
    except (OSError, ValueError, SyntaxError):
        return None
    return htmlkit.thumbnail_uri(rgb, cfg.report.thumb_px)


def sheet(title: str, rows: pd.DataFrame, root: Path, cfg: FilterConfig) -> dict:
    """One contact sheet's template context: a thumbnail (first scored view), score and reason per object."""
    cells = []
    for r in rows.itertuples():
        views = list(r.views) if r.views is not None else []
        cells.append(
            {
                "uri": thumbnail_uri(root, r.uid, int(views[0]) if len(views) else 0, cfg),
                "uid": r.uid,
                "score": "—" if not np.isfinite(r.score) else f"{r.score:.4f}",
                "why": r.drop_reason or "kept",
                "text": r.text or "",
            }
        )
    return {"title": title, "cells": cells}


NEAR_BAND = 0.05
"""Half-width of the near-threshold band, as a share of the observed score range (max - min)."""


def near_threshold(scored: pd.DataFrame, threshold: float, n: int) -> tuple[pd.DataFrame, float]:
    """(rows of ``scored`` whose ``score`` is within the band, best first; the band's half-width). The band is
    ``NEAR_BAND`` of the observed score range on either side of the threshold: the objects a small change of
    the threshold would flip (at most the ``n`` nearest), not simply the n nearest, which for a small run is
    every object."""
    if not len(scored) or not math.isfinite(threshold):
        return scored.head(0), 0.0
    margin = NEAR_BAND * float(scored["score"].max() - scored["score"].min())
    near = scored.assign(dist=(scored["score"] - threshold).abs())
    near = near[near["dist"] <= margin].sort_values("dist").head(n)
    return near.sort_values("score", ascending=False), margin


def write_report(
    path: Path, root: Path, scores: pd.DataFrame, selection: pd.DataFrame, threshold: float, cfg: FilterConfig
) -> None:
    """Write report.html for ``selection`` (joined to ``scores`` by uid); markup in
    mvforge/templates/filter_report.html.j2."""
    df = scores[["uid", "text", "views"]].merge(
        selection.rename(columns={"reason": "drop_reason"}), on="uid", how="inner"
    )
    n = cfg.report.sheet_size
    kept = df[df["kept"]].sort_values("score", ascending=False).head(n)
    dropped = df[~df["kept"]].sort_values("score", ascending=True, na_position="first").head(n)
    scored = df[np.isfinite(df["score"])]
    near, margin = near_threshold(scored, threshold, n)
    # The model actually loaded: with local-dir:DIR the folder's config names it, not cfg.model.name.
    model = str(scores["model"].iloc[0]) if len(scores) else cfg.model.name
    reasons = selection["reason"].fillna("kept").value_counts()
    mode = (
        f"--clip-threshold {cfg.select.clip_threshold}"
        if cfg.select.clip_threshold is not None
        else f"--keep-fraction {cfg.select.keep_fraction}"
    )
    page = htmlkit.render(
        "filter_report.html.j2",
        thumb_px=cfg.report.thumb_px,
        model=model,
        pretrained=cfg.model.pretrained,
        text_template=cfg.text.template,
        agg=cfg.select.agg,
        views=cfg.views.count,
        mode=mode,
        threshold=threshold,
        histogram=htmlkit.histogram_svg(
            df["score"].to_list(),
            cfg.report.histogram_bins,
            kept=df["kept"].astype(bool).to_list(),
            threshold=threshold,
        ),
        total=len(selection),
        counts=list(reasons.items()),
        sheets=[
            sheet("Kept (best first)", kept, root, cfg),
            sheet(f"Near the threshold (score within ±{margin:.4f})", near, root, cfg),
            sheet("Dropped (worst first)", dropped, root, cfg),
        ],
    )
    atomic_write_text(path, page)
