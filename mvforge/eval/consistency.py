"""mvforge's own multi-view consistency figure (not a metric of the MVDream paper).

For each object, the V views lie on one orbit (equal azimuth steps, docs/design.md §3), so neighbours on the
ring should look alike: the figure is 100 · the mean cosine of the image embeddings of ring-adjacent views
(v, v+1 mod V). Near 100: views that embed alike (consistent, or identical: a model that ignores the camera
scores high too, so read it beside the reference renders' value); low: views that disagree. It is computed for
the reference renders' views in the same way, which gives the scale.
"""

from __future__ import annotations

import numpy as np


def adjacent_view_similarity(embeddings: np.ndarray) -> np.ndarray:
    """(P, V, D) image embeddings (views in orbit order) -> (P,) 100 · mean cos of ring-adjacent views.

    V = 2 has one adjacent pair; V = 1 gives NaN (no neighbour)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 3:
        raise ValueError(f"expected (objects, views, dim) embeddings, got shape {e.shape}")
    p, v, _ = e.shape
    if v < 2:
        return np.full(p, np.nan)
    e = e / np.linalg.norm(e, axis=2, keepdims=True)
    nxt = np.roll(e, -1, axis=1)
    cos = (e * nxt).sum(axis=2)  # (P, V): view v with view v+1 (mod V)
    if v == 2:
        cos = cos[:, :1]  # the ring of two has a single pair
    return 100.0 * cos.mean(axis=1)
