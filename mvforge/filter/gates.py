"""Quality gates computed from the renders themselves (docs/design.md §2.2): empty, cut by the border, tiny,
uniform colour, plus the pixel-level safety net (the missing-image colour, under- and over-exposure, faint
alpha) and objects whose broken textures the renderer stripped. The safety net exists because no list of
importers and material checks in the renderer is ever complete: whatever slipped through still shows in the
pixels.

Raw per-view measurements are taken while the views are decoded for CLIP and stored in scores.parquet as
lists; summaries and pass/fail decisions are computed from those lists with the current thresholds
(``gate_table``), so new thresholds re-select without decoding anything again.
"""

from __future__ import annotations

import numpy as np

from mvforge.filter.config import GatesConfig

# Order matters: an object's drop reason is its first failing gate. An empty render is also "uniform" and a
# frame-filling backdrop also "cut by the border", so the more specific diagnosis comes first; a render known to
# be repaired or broken (stripped textures, magenta) is named before the generic symptoms it also shows.
GATE_REASONS = (
    "empty_render",
    "stripped_textures",
    "missing_texture_color",
    "faint_alpha",
    "underexposed",
    "overexposed",
    "uniform_color",
    "tiny_coverage",
    "cut_by_border",
)

# Per-view lists stored by the scorer (aligned with the ``views`` column).
VIEW_COLUMNS = ("view_coverage", "view_border", "view_color_std")
# The safety-net lists (docs/design.md §2.2), also per view: fractions of the object's pixels (alpha above the
# threshold).
PIXEL_COLUMNS = ("view_magenta", "view_dark", "view_clipped", "view_opaque")

# Magenta (the colour Cycles shows for an image it cannot load) after shading: red and blue within 15% of each
# other, green under a quarter of them, not near black. Shading scales all three channels, so a hue test
# catches lit and shadowed magenta alike.
MAGENTA_RB_BALANCE = 0.15
MAGENTA_G_RATIO = 0.25
MAGENTA_MIN_LEVEL = 48
# A pixel is crushed to black when no channel exceeds this, blown to white when every channel reaches this.
DARK_LEVEL = 10
CLIPPED_LEVEL = 250
# A pixel of the object is opaque from this alpha on (half coverage).
OPAQUE_ALPHA = 128


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


def pixel_metrics(rgba: np.ndarray, alpha_threshold: int) -> tuple[float, float, float, float]:
    """The safety-net measurements of one view (docs/design.md §2.2), each a fraction in [0, 1] of the
    object's pixels (alpha above ``alpha_threshold``) of ``rgba`` (H, W, 4) uint8 straight-alpha sRGB:
    (magenta, crushed to black, blown to white, opaque). A view without object pixels gives zeros (the empty
    gate handles it)."""
    mask = rgba[..., 3] > alpha_threshold
    n = int(mask.sum())
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    px = rgba[mask].astype(np.int32)
    r, g, b, a = px[:, 0], px[:, 1], px[:, 2], px[:, 3]
    hi = np.maximum(r, b)
    magenta = (
        (hi >= MAGENTA_MIN_LEVEL)
        & (np.abs(r - b) <= MAGENTA_RB_BALANCE * hi)
        & (g <= MAGENTA_G_RATIO * np.minimum(r, b))
    )
    dark = px[:, :3].max(axis=1) < DARK_LEVEL
    clipped = px[:, :3].min(axis=1) >= CLIPPED_LEVEL
    opaque = a >= OPAQUE_ALPHA
    return float(magenta.mean()), float(dark.mean()), float(clipped.mean()), float(opaque.mean())


def gate_table(
    coverage: list[np.ndarray],
    border: list[np.ndarray],
    color_std: list[np.ndarray],
    cfg: GatesConfig,
    *,
    pixels: dict[str, list] | None = None,
    framing: list | None = None,
    stripped_textures: list | None = None,
) -> dict[str, np.ndarray]:
    """Summary metrics and "problem found" booleans per object from its per-view lists.

    ``pixels``: the per-view lists of ``PIXEL_COLUMNS`` (missing ones: no measurement, no gate). ``framing``:
    each object's cameras.json framing; under ``"mvdream"`` the paper's rule lets corners be cut, so the border
    gate does not apply (docs/design.md §3, framing). ``stripped_textures``: meta.json
    ``stats.stripped_textures`` per object. An object without measured views (unreadable) gets NaN metrics and
    fails no gate: it already has a reason.
    """

    def reduce(lists: list[np.ndarray], fn) -> np.ndarray:
        return np.asarray([float(fn(np.asarray(x, dtype=np.float64))) if len(x) else np.nan for x in lists])

    cov_max = reduce(coverage, np.max)
    cov_median = reduce(coverage, np.median)
    cut = reduce(border, lambda b: (b > cfg.border_pixels_max_fraction).mean())
    std_mean = reduce(color_std, np.mean)
    n = len(coverage)
    pixels = pixels or {}

    def pixel_mean(name: str) -> np.ndarray:
        lists = pixels.get(name)
        return reduce(lists, np.mean) if lists is not None else np.full(n, np.nan)

    magenta, dark, clipped, opaque = (pixel_mean(c) for c in PIXEL_COLUMNS)
    border_applies = np.array([f != "mvdream" for f in (framing if framing is not None else [None] * n)])
    stripped = np.array(
        [float(x) if x is not None and np.isfinite(x) else 0.0 for x in (stripped_textures or [0] * n)]
    )
    with np.errstate(invalid="ignore"):
        return {
            "coverage_mean": reduce(coverage, np.mean),
            "coverage_median": cov_median,
            "border_cut_fraction": cut,
            "color_std_mean": std_mean,
            "magenta_mean": magenta,
            "dark_mean": dark,
            "clipped_mean": clipped,
            "opaque_mean": opaque,
            "gate_empty_render": cov_max <= cfg.empty_coverage_max,
            "gate_stripped_textures": (stripped > 0) & (not cfg.keep_stripped_textures),
            "gate_missing_texture_color": magenta > cfg.magenta_max_fraction,
            "gate_faint_alpha": opaque < cfg.opaque_min_fraction,
            "gate_underexposed": dark > cfg.dark_max_fraction,
            "gate_overexposed": clipped > cfg.clipped_max_fraction,
            "gate_uniform_color": std_mean < cfg.uniform_std_max,
            "gate_tiny_coverage": cov_median < cfg.tiny_coverage_min,
            "gate_cut_by_border": (cut > cfg.border_views_max_fraction) & border_applies,
        }
