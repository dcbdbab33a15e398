"""The filter page's "near the threshold" sheet holds the objects near the threshold, not every object."""

from __future__ import annotations

import math

import pandas as pd

from mvforge.filter.report import NEAR_BAND, near_threshold


def test_near_threshold_keeps_the_band_around_the_threshold_only():
    """Fails before: with sheet_size >= the number of objects, every object was "near the threshold"."""
    scored = pd.DataFrame(
        {"uid": [f"o{i}" for i in range(11)], "score": [0.20 + 0.01 * i for i in range(11)]}
    )
    near, margin = near_threshold(scored, 0.25, n=50)
    assert math.isclose(margin, NEAR_BAND * 0.10)  # 5% of the 0.20..0.30 range: 0.005
    assert near["uid"].tolist() == ["o5"]  # only 0.25 itself; 0.24 and 0.26 are 0.01 away
    wide, _ = near_threshold(scored.assign(score=[0.0] + [0.25] * 9 + [1.0]), 0.25, n=4)
    assert len(wide) == 4  # at most the sheet size
    assert near_threshold(scored, float("inf"), n=5)[0].empty
