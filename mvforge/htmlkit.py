"""The HTML pieces every report shares: one Jinja2 environment with autoescaping over the templates in
``mvforge/templates/``, one histogram writer (inline SVG), one thumbnail encoder (base64 PNG data URI).

A shared layer (docs/design.md §1): the run report (``mvforge.report``) and the stages' own pages
(``filter/report.py``) both use it; it imports no stage. Markup lives in the templates, never in Python
strings, so every value is escaped by the engine (a caption with ``<script>`` shows as text).
"""

from __future__ import annotations

import base64
import io
import math
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

TEMPLATES = Path(__file__).parent / "templates"


@cache
def environment():
    """The Jinja2 environment: templates from mvforge/templates, HTML/SVG autoescaping, strict undefineds
    (a misspelt variable is an error in tests, not an empty string in a report)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "svg", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else str(v)
    return env


def render(template_name: str, **context) -> str:
    """Render ``mvforge/templates/<template_name>`` with ``context``; the result is safe markup (a ``Markup`` str),
    so a rendered section or chart can be placed into another template without being escaped again."""
    from markupsafe import Markup

    return Markup(environment().get_template(template_name).render(**context))


def histogram_bins(values: list[float], bins: int) -> tuple[float, float, list[int]]:
    """(low, high, bin index of each value): equal-width bins over [min, max], the last bin closed; a single
    value gets the range value ± 0.5 so it still has a bin."""
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    return low, high, [min(int((v - low) / width), bins - 1) for v in values]


def histogram_svg(
    values: list[float],
    bins: int,
    kept: list[bool] | None = None,
    threshold: float | None = None,
    width: int = 640,
    height: int = 200,
    xlabel: str = "CLIP score (aggregate cosine similarity)",
) -> str:
    """A histogram as inline SVG: bars of all values (grey), the ``kept`` ones stacked in green when given, the
    threshold as a red line. Each bar carries ``data-count`` / ``data-kept`` (tests check them against numpy).
    Non-finite values are left out; an empty input gives a one-line note instead of a chart.
    """
    pairs = [(float(v), bool(k)) for v, k in zip(values, kept or [False] * len(values), strict=True)]
    pairs = [(v, k) for v, k in pairs if math.isfinite(v)]
    if not pairs:
        return render("histogram_empty.html.j2")
    low, high, idx = histogram_bins([v for v, _ in pairs], bins)
    total, kept_n = [0] * bins, [0] * bins
    for i, (_, k) in zip(idx, pairs, strict=True):
        total[i] += 1
        kept_n[i] += int(k)
    pad_l, pad_b = 44, 34  # room for the y tick labels and the x tick labels + axis label
    plot_h = height - pad_b - 10
    bar_w = (width - pad_l - 8) / bins
    scale = plot_h / max(max(total), 1)
    bars = [
        {
            "x": pad_l + b * bar_w,
            "w": bar_w - 1,
            "y_all": height - pad_b - total[b] * scale,
            "h_all": total[b] * scale,
            "y_kept": height - pad_b - kept_n[b] * scale,
            "h_kept": kept_n[b] * scale,
            "count": total[b],
            "kept": kept_n[b],
            "lo": low + (high - low) * b / bins,
            "hi": low + (high - low) * (b + 1) / bins,
        }
        for b in range(bins)
    ]
    # Axis ticks: 5 score values over the binned range; counts 0, half and the tallest bar.
    span = width - pad_l - 8
    xticks = [(pad_l + span * i / 4, low + (high - low) * i / 4) for i in range(5)]
    top = max(total)
    yticks = sorted({0, top // 2, top})
    yticks = [(height - pad_b - c * scale, c) for c in yticks]
    tx = None
    if threshold is not None and math.isfinite(threshold) and low <= threshold <= high:
        tx = pad_l + (threshold - low) / (high - low) * (width - pad_l - 8)
    return render(
        "histogram.svg.j2",
        bars=bars,
        width=width,
        height=height,
        pad_l=pad_l,
        base=height - pad_b,
        low=low,
        high=high,
        top=max(total),
        threshold=threshold,
        tx=tx,
        stacked=kept is not None,
        xticks=xticks,
        yticks=yticks,
        xlabel=xlabel,
    )


def thumbnail_uri(image: Image.Image, px: int) -> str:
    """A ``data:image/png;base64,...`` URI of ``image`` shrunk to fit ``px`` × ``px`` (aspect kept, mode kept:
    RGBA stays RGBA). The one thumbnail encoder of the reports."""
    from PIL import Image as PILImage

    im = image.copy()
    im.thumbnail((px, px), PILImage.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
