"""Line plots with axes, ticks, labels and a legend as inline SVG for the HTML reports (matplotlib's object API:
no pyplot state, no display backend). ``None`` when matplotlib is not installed, so a report falls back to its
plain drawing. The SVG is deterministic (fixed id salt, no date), so the same metrics give the same page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

PALETTE = ("#1e88e5", "#fb8c00", "#43a047", "#8e24aa", "#e53935")
DASHES = ("-", "--", ":", "-.")
"""Line styles in turn, so a series lying on another (SDS total = SDS loss without the orientation term) shows."""


def line_plot_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_y: bool = False,
    size_in: tuple[float, float] = (6.4, 2.6),
) -> str | None:
    """``<svg>`` markup of one line per (label, xs, ys); non-finite points are left out, empty series dropped.
    ``log_y``: a log y axis when every value is positive. None without matplotlib or without a finite point."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        return None
    clean = []
    for label, xs, ys in series:
        pts = [
            (float(x), float(y)) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and math.isfinite(x)
        ]
        if pts:
            clean.append((label, pts))
    if not clean:
        return None
    with matplotlib.rc_context({"svg.hashsalt": "mvforge", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=size_in)
        ax = fig.add_subplot()
        for i, (label, pts) in enumerate(clean):
            xs, ys = zip(*pts, strict=True)
            ax.plot(
                xs,
                ys,
                label=label,
                color=PALETTE[i % len(PALETTE)],
                linestyle=DASHES[i % len(DASHES)],
                linewidth=1.2,
                marker="." if len(xs) < 30 else None,
            )
        if log_y and all(y > 0 for _, pts in clean for _, y in pts):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if len(clean) > 1:
            ax.legend(frameon=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]
