"""Each metric (docs/eval.md) equals its definition computed by hand on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from mvforge.errors import UserError
from mvforge.eval import metrics
from mvforge.eval.consistency import adjacent_view_similarity


def test_fid_of_gaussians_equals_closed_form():
    """Features drawn from two Gaussians of known mean and covariance: FID -> the closed-form Fréchet distance
    (the sample-statistics estimate converges; checked exactly on the sample statistics, and to ~1% on the
    population ones)."""
    rng = np.random.default_rng(0)
    d = 4
    a = rng.standard_normal((d, d))
    s1 = a @ a.T + np.eye(d)
    s2 = np.diag([1.0, 2.0, 0.5, 3.0])
    m1, m2 = np.zeros(d), np.array([1.0, -1.0, 0.5, 2.0])
    # Closed form by hand for the population: ||m1-m2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½); with S2
    # diagonal, (S1 S2)^½ has the trace of (S2^½ S1 S2^½)^½, which is symmetric PSD (eigh, not sqrtm).
    r = np.sqrt(s2)
    ev = np.linalg.eigvalsh(r @ s1 @ r)
    closed = float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(closed, abs=1e-3)

    x = rng.multivariate_normal(m1, s1, size=200_000)
    y = rng.multivariate_normal(m2, s2, size=200_000)
    sample_closed = metrics.frechet_distance(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    assert metrics.fid(x, y) == pytest.approx(sample_closed, abs=1e-3)
    assert metrics.fid(x, y) == pytest.approx(closed, rel=0.02)
    # Identical sets: 0.
    assert metrics.fid(x[:500], x[:500]) == pytest.approx(0.0, abs=1e-3)


def test_inception_score_by_hand():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]]))
    p = np.exp(logits)
    py = p.mean(0)
    kl = [sum(p[i, k] * np.log(p[i, k] / py[k]) for k in range(3)) for i in range(4)]
    expected = float(np.exp(np.mean(kl)))
    got = metrics.inception_score(logits, splits=1)
    assert got.mean == pytest.approx(expected, abs=1e-12)
    assert got.std == 0.0 and got.n == 1
    # Two splits: each split's own p(y); mean and std over the two.
    halves = []
    for part in (p[:2], p[2:]):
        q = part.mean(0)
        halves.append(np.exp(np.mean([(r * np.log(r / q)).sum() for r in part])))
    two = metrics.inception_score(logits, splits=2)
    assert two.mean == pytest.approx(np.mean(halves)) and two.std == pytest.approx(np.std(halves))
    # One class everywhere: IS = 1; uniform over K distinct classes: IS = K.
    assert metrics.inception_score(np.log(np.eye(3)[[0, 0, 0]] + 1e-12), 1).mean == pytest.approx(1.0)
    assert metrics.inception_score(np.log(np.eye(3) + 1e-12), 1).mean == pytest.approx(3.0, rel=1e-6)


def test_clip_score_by_hand():
    img = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    txt = np.array([[1.0, 1.0], [0.0, -1.0], [3.0, 3.0]])
    expected = [100 * 1 / np.sqrt(2), 0.0, 100.0]  # cos 45° ; cos 180° clipped at 0 ; same direction
    np.testing.assert_allclose(metrics.clip_scores(img, txt), expected, atol=1e-9)


def test_kid_by_hand():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 0.5]])

    def k(a, b):
        return (a @ b / 2 + 1) ** 3

    kxx = np.mean([k(x[i], x[j]) for i in range(3) for j in range(3) if i != j])
    kyy = np.mean([k(y[i], y[j]) for i in range(2) for j in range(2) if i != j])
    kxy = np.mean([k(x[i], y[j]) for i in range(3) for j in range(2)])
    got, size = metrics.kid(x, y, subset_size=1000)
    assert size == 2  # the smaller set's size
    # subset size 2 < 3 rows of x: random subsets; with subset_size >= both sizes it is the exact estimate.
    exact = metrics.mmd2_unbiased(x, y)
    assert exact == pytest.approx(kxx + kyy - 2 * kxy, abs=1e-12)
    assert got.n == 100 and np.isfinite(got.mean)
    x2 = x[:2]
    kxx2 = k(x2[0], x2[1])
    one, size2 = metrics.kid(x2, y, subset_size=1000)
    expected = kxx2 + kyy - 2 * np.mean([k(a, b) for a in x2 for b in y])
    assert size2 == 2 and one.n == 1 and one.mean == pytest.approx(expected, abs=1e-12)


def test_bad_feature_arrays_raise_user_error():
    with pytest.raises(UserError, match="N >= 2"):
        metrics.fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(UserError, match="NaN"):
        metrics.kid(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_consistency_adjacent_views():
    e = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], [[1.0, 0.0]] * 4])
    np.testing.assert_allclose(adjacent_view_similarity(e), [0.0, 100.0], atol=1e-9)
    assert np.isnan(adjacent_view_similarity(np.ones((2, 1, 3)))).all()
