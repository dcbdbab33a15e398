"""Quality gates computed from the renders themselves (issue 5): empty, cut by the border, tiny, uniform colour.

Raw per-view measurements are taken while the views are decoded for CLIP and stored in scores.parquet as
lists; summaries and pass/fail decisions are computed from those lists with the current thresholds
(``gate_table``), so new thresholds re-select without decoding anything again.
"""

from __future__ import annotations

import numpy as np

from mvforge.filter.config import GatesConfig

# Order matters: an object's drop reason is its first failing gate. An empty render is also "uniform" and a
# frame-filling backdrop also "cut by the border", so the more specific diagnosis comes first.
GATE_REASONS = ("empty_render", "uniform_color", "tiny_coverage", "cut_by_border")

# Per-view lists stored by the scorer (aligned with the ``views`` column).
VIEW_COLUMNS = ("view_coverage", "view_border", "view_color_std")


def view_metrics(
    rgba: np.ndarray, composited_rgb: np.ndarray, alpha_threshold: int
) -> tuple[float, float, float]:
    """(object-pixel fraction, object fraction of the outermost pixel ring, mean per-channel RGB std in 0-1)
    of one view: ``rgba`` (H, W, 4) uint8 as rendered, ``composited_rgb`` (H, W, 3) uint8 on the background."""
    mask = rgba[..., 3] > alpha_threshold
    coverage = float(mask.mean())
    ring = np.concatenate([mask[0, :], mask[-1, :], mask[1:-1, 0], mask[1:-1, -1]])
    border = float(ring.mean()) if ring.size else 0.0
    # Per channel, then averaged: a flat (r, g, b) image must score 0 however different r, g and b are.
    std = float(composited_rgb.reshape(-1, 3).astype(np.float32).std(axis=0).mean() / 255.0)
    return coverage, border, std


def gate_table(
    coverage: list[np.ndarray], border: list[np.ndarray], color_std: list[np.ndarray], cfg: GatesConfig
) -> dict[str, np.ndarray]:
    """Summary metrics and "problem found" booleans per object from its per-view lists.

    An object without measured views (unreadable) gets NaN metrics and fails no gate: it already has a reason.
    """

    def reduce(lists: list[np.ndarray], fn) -> np.ndarray:
        return np.asarray([float(fn(np.asarray(x, dtype=np.float64))) if len(x) else np.nan for x in lists])

    cov_max = reduce(coverage, np.max)
    cov_median = reduce(coverage, np.median)
    cut = reduce(border, lambda b: (b > cfg.border_pixels_max_fraction).mean())
    std_mean = reduce(color_std, np.mean)
    with np.errstate(invalid="ignore"):
        return {
            "coverage_mean": reduce(coverage, np.mean),
            "coverage_median": cov_median,
            "border_cut_fraction": cut,
            "color_std_mean": std_mean,
            "gate_empty_render": cov_max <= cfg.empty_coverage_max,
            "gate_uniform_color": std_mean < cfg.uniform_std_max,
            "gate_tiny_coverage": cov_median < cfg.tiny_coverage_min,
            "gate_cut_by_border": cut > cfg.border_views_max_fraction,
        }
