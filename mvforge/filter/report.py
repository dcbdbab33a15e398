"""report.html: one self-contained page (inline SVG + base64 thumbnails) to judge a threshold by eye.

It shows the score histogram with the threshold, the counts per drop reason, and contact sheets of kept,
dropped and near-threshold objects (issue 5) — the objects a threshold change would flip.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mvforge.filter.clip import composite, read_view
from mvforge.filter.config import FilterConfig
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_text


def histogram_svg(
    scores: np.ndarray, threshold: float, bins: int, width: int = 640, height: int = 200
) -> str:
    """Bars of the aggregate-score histogram and a red line at the threshold."""
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return "<p>No scored objects.</p>"
    lo, hi = float(scores.min()), float(scores.max())
    if math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5e-3, hi + 0.5e-3
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    pad, h = 30, height - 40
    bar_w = (width - 2 * pad) / bins
    x = lambda v: pad + (v - lo) / (hi - lo) * (width - 2 * pad)  # noqa: E731
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">']
    top = max(int(counts.max()), 1)
    for i, c in enumerate(counts):
        bh = c / top * h
        parts.append(
            f'<rect x="{pad + i * bar_w:.1f}" y="{10 + h - bh:.1f}" width="{max(bar_w - 1, 1):.1f}" '
            f'height="{bh:.1f}" fill="#4a7"><title>[{edges[i]:.4f}, {edges[i + 1]:.4f}): {c}</title></rect>'
        )
    if math.isfinite(threshold):
        tx = x(threshold)
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="5" y2="{10 + h}" stroke="red" stroke-width="2"/>'
        )
        parts.append(f'<text x="{tx + 3:.1f}" y="15" fill="red">threshold {threshold:.4f}</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}">{lo:.4f}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">{hi:.4f}</text>')
    parts.append(f'<text x="{pad}" y="10">max {top}</text></svg>')
    return "".join(parts)


def thumbnail_uri(root: Path, uid: str, view: int, cfg: FilterConfig) -> str | None:
    """A data: URI of one view composited on the scoring background, or None when it cannot be read."""
    try:
        obj = layout.RenderedObject(uid, layout.object_dir(root, uid))
        rgb = composite(read_view(obj.view_path(view)), cfg.views.background_rgb)
    except (OSError, ValueError, SyntaxError):
        return None
    rgb.thumbnail((cfg.report.thumb_px, cfg.report.thumb_px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(title: str, rows: pd.DataFrame, root: Path, cfg: FilterConfig) -> str:
    cells = []
    for r in rows.itertuples():
        views = list(r.views) if r.views is not None else []
        uri = thumbnail_uri(root, r.uid, int(views[0]) if len(views) else 0, cfg)
        img = (
            f'<img src="{uri}" width="{cfg.report.thumb_px}">'
            if uri
            else f'<div class="missing" style="width:{cfg.report.thumb_px}px">no image</div>'
        )
        score = "—" if not np.isfinite(r.score) else f"{r.score:.4f}"
        why = html.escape(r.drop_reason or "kept")
        cells.append(
            f"<figure>{img}<figcaption><b>{html.escape(r.uid)}</b><br>{score} · {why}<br>"
            f"<i>{html.escape(r.text or '')}</i></figcaption></figure>"
        )
    body = "".join(cells) or "<p>none</p>"
    return f"<h2>{html.escape(title)} ({len(rows)})</h2><div class='sheet'>{body}</div>"


def write_report(
    path: Path, root: Path, scores: pd.DataFrame, selection: pd.DataFrame, threshold: float, cfg: FilterConfig
) -> None:
    """Write report.html for ``selection`` (joined to ``scores`` by uid)."""
    df = scores[["uid", "text", "views"]].merge(
        selection.rename(columns={"reason": "drop_reason"}), on="uid", how="inner"
    )
    n = cfg.report.sheet_size
    kept = df[df["kept"]].sort_values("score", ascending=False).head(n)
    dropped = df[~df["kept"]].sort_values("score", ascending=True, na_position="first").head(n)
    scored = df[np.isfinite(df["score"])]
    if math.isfinite(threshold) and len(scored):
        near = scored.assign(dist=(scored["score"] - threshold).abs()).sort_values("dist").head(n)
        near = near.sort_values("score", ascending=False)
    else:
        near = scored.head(0)
    # The model actually loaded: with local-dir:DIR the folder's config names it, not cfg.model.name.
    model = str(scores["model"].iloc[0]) if len(scores) else cfg.model.name
    reasons = selection["reason"].fillna("kept").value_counts()
    count_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in reasons.items())
    mode = (
        f"--clip-threshold {cfg.select.clip_threshold}"
        if cfg.select.clip_threshold is not None
        else f"--keep-fraction {cfg.select.keep_fraction}"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mvdata filter report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }} td {{ padding: 2px 10px; border-bottom: 1px solid #ddd; }}
.sheet {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; width: {cfg.report.thumb_px + 40}px; font-size: 11px; }}
.missing {{ height: {cfg.report.thumb_px}px; background: #eee; color: #900; text-align: center; }}
</style></head><body>
<h1>mvdata filter</h1>
<p>model <code>{html.escape(model)}</code>, weights <code>{html.escape(cfg.model.pretrained)}</code>,
template <code>{html.escape(cfg.text.template)}</code>, aggregate <code>{html.escape(cfg.select.agg)}</code> over
{cfg.views.count} views; selection {html.escape(mode)}; effective threshold <b>{threshold:.4f}</b>.</p>
<h2>Aggregate CLIP cosine</h2>
{histogram_svg(df["score"].to_numpy(dtype=np.float64), threshold, cfg.report.histogram_bins)}
<h2>Counts</h2>
<table><tr><td>objects</td><td>{len(selection)}</td></tr>{count_rows}</table>
{contact_sheet("Kept (best first)", kept, root, cfg)}
{contact_sheet("Near the threshold", near, root, cfg)}
{contact_sheet("Dropped (worst first)", dropped, root, cfg)}
</body></html>
"""
    atomic_write_text(path, page)
