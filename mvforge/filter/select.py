"""From stored scores to a selection: aggregate, gates, threshold or keep-fraction (docs/design.md §2.2).

Pure functions of the scores table and the config, so re-selecting with a new threshold, keep-fraction,
aggregate or gate limit never touches the model or the images.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mvforge.filter.config import FilterConfig, parse_agg
from mvforge.filter.gates import GATE_REASONS, PIXEL_COLUMNS, gate_table


def aggregate(cosines: list, agg: str) -> np.ndarray:
    """Per-object aggregate of its per-view cosines; NaN for an object without scores."""
    name, k = parse_agg(agg)
    out = np.full(len(cosines), np.nan)
    for i, c in enumerate(cosines):
        c = np.asarray(c, dtype=np.float64)
        if c.size == 0:
            continue
        if name == "mean":
            out[i] = c.mean()
        elif name == "median":
            out[i] = np.median(c)
        elif name == "max":
            out[i] = c.max()
        else:  # topk: the mean of the K best views (all of them when an object has fewer)
            out[i] = np.sort(c)[::-1][:k].mean()
    return out


def annotate(scores: pd.DataFrame, cfg: FilterConfig) -> pd.DataFrame:
    """``scores`` plus ``agg``, ``aggregate``, the gate summary metrics and ``gate_*`` booleans under ``cfg``."""
    df = scores.copy()
    df["agg"] = cfg.select.agg
    df["aggregate"] = aggregate(list(df["cosines"]), cfg.select.agg)
    gates = gate_table(
        list(df["view_coverage"]),
        list(df["view_border"]),
        list(df["view_color_std"]),
        cfg.gates,
        pixels={c: list(df[c]) for c in PIXEL_COLUMNS if c in df},
        framing=list(df["framing"]) if "framing" in df else None,
        stripped_textures=list(df["stripped_textures"]) if "stripped_textures" in df else None,
    )
    for key, values in gates.items():
        df[key] = values
    return df


def effective_threshold(eligible_scores: np.ndarray, cfg: FilterConfig) -> float:
    """The cosine an object must reach: --clip-threshold as given, or for --keep-fraction F the score of the
    ceil(F*n)-th best eligible object (DataComp style: ties at the threshold are all kept; +inf keeps none)."""
    s = cfg.select
    if s.clip_threshold is not None:
        return float(s.clip_threshold)
    n = len(eligible_scores)
    k = math.ceil(s.keep_fraction * n - 1e-9)
    if k <= 0:
        return math.inf
    return float(np.sort(eligible_scores)[::-1][k - 1])


def select(annotated: pd.DataFrame, cfg: FilterConfig) -> tuple[pd.DataFrame, float]:
    """(selection table: uid, score, kept, reason (None when kept), threshold; the effective threshold).

    An object's reason is the first that applies: its scoring reason (clip.NOT_SCORABLE), the first failing
    gate (GATE_REASONS order, when gates are enabled), ``non_finite_score``, ``below_threshold``.
    """
    reason = annotated["reason"].fillna("").to_numpy(dtype=object)
    if cfg.gates.enabled:
        for gate in GATE_REASONS:
            reason = np.where((reason == "") & annotated[f"gate_{gate}"].to_numpy(dtype=bool), gate, reason)
    score = annotated["aggregate"].to_numpy(dtype=np.float64)
    # A NaN (fp16 overflow, an object without cosines) would sort first and become the keep-fraction threshold.
    reason = np.where((reason == "") & ~np.isfinite(score), "non_finite_score", reason)
    eligible = reason == ""
    threshold = effective_threshold(score[eligible], cfg)
    reason = np.where(eligible & (score < threshold), "below_threshold", reason)
    kept = reason == ""
    out = pd.DataFrame(
        {
            "uid": annotated["uid"].to_numpy(),
            "score": score,
            "kept": kept,
            "reason": [None if k else r for k, r in zip(kept, reason, strict=True)],
            "threshold": np.full(len(annotated), threshold),
        }
    )
    return out, threshold
