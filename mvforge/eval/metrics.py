"""FID, KID, Inception Score and CLIP score written from their definitions, on arrays (MVDream §5.1).

Every function takes features or logits already extracted (``mvforge.eval.extractors``), so the definitions are
tested on hand-made arrays and the extractor can be swapped. numpy and scipy only.

Sources: FID, Heusel et al. 2017 (eq. 6, Fréchet distance of Gaussians fitted to Inception pool features);
KID, Bińkowski et al. 2018 (unbiased MMD² with the cubic polynomial kernel, averaged over subsets);
IS, Salimans et al. 2016 (exp E_x KL(p(y|x) ‖ p(y)), mean ± std over splits);
CLIP score, Hessel et al. 2021 (w · max(cos, 0), w = 100 as in MVDream's Table 1 and torchmetrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from mvforge.errors import UserError


@dataclass(frozen=True)
class MeanStd:
    """A statistic over ``n`` items or subsets: ``mean`` ± ``std`` (population std, ddof 0)."""

    mean: float
    std: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def _features(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(
            f"{what}: need an (N >= 2, D) feature array, got shape {x.shape}; evaluate more images"
        )
    if not np.isfinite(x).all():
        raise UserError(f"{what}: features hold NaN or inf; check the extractor's weights")
    return x


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of (N, D) features, the unbiased covariance (ddof 1) as pytorch-fid."""
    f = _features(features, "gaussian_stats")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½): the Fréchet (2-Wasserstein²) distance of two Gaussians.

    A singular product (fewer samples than dimensions) gets 1e-6 added to both diagonals before the square root,
    and the root's tiny imaginary part from round-off is dropped (the usual treatment, pytorch-fid)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID of two (N, D) feature sets (generated, reference): the Fréchet distance of their Gaussian fits."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (xᵀy / D + 1)³ for every row pair: (N, D), (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic kernel: mean k(x_i, x_j) over i ≠ j + the same for y − 2 mean k(x_i, y_j)."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kid(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[MeanStd, int]:
    """KID: unbiased MMD² over ``subsets`` random subsets of ``subset_size`` rows of each set (without
    replacement), mean ± std over subsets; returns (that, the subset size used). A subset size at least as large
    as the smaller set uses every row once (one exact subset: the estimate is unbiased at any N >= 2)."""
    a, b = _features(features_a, "KID generated"), _features(features_b, "KID reference")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size >= a.shape[0] and size >= b.shape[0]:
        return MeanStd(mmd2_unbiased(a, b), 0.0, 1), size
    rng = np.random.default_rng(seed)
    vals = [
        mmd2_unbiased(
            a[rng.choice(a.shape[0], size, replace=False)], b[rng.choice(b.shape[0], size, replace=False)]
        )
        for _ in range(subsets)
    ]
    return MeanStd(float(np.mean(vals)), float(np.std(vals)), subsets), size


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits: np.ndarray, splits: int = 10) -> MeanStd:
    """IS of (N, K) classifier logits: exp(mean_x KL(p(y|x) ‖ p(y))) per split of consecutive rows, p(y) the
    split's mean prediction; mean ± std over splits (``splits`` is lowered to N when there are fewer images)."""
    p = softmax(_features(logits, "inception_score"))
    splits = max(1, min(splits, p.shape[0]))
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(py, 1e-30, None)))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return MeanStd(float(np.mean(scores)), float(np.std(scores)), splits)


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per-row CLIP score 100 · max(cos(image_i, text_i), 0) of (N, D) image and (N, D) text embeddings
    (normalised here; the embeddings need not be unit length): (N,) float64 in [0, 100]."""
    a = np.asarray(image_embeddings, dtype=np.float64)
    b = np.asarray(text_embeddings, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise UserError(f"clip_scores: image {a.shape} and text {b.shape} embeddings must both be (N, D)")
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * np.clip(cos, 0.0, None)


def mean_std(values) -> MeanStd:
    v = np.asarray(values, dtype=np.float64)
    return MeanStd(float(v.mean()), float(v.std()), int(v.size)) if v.size else MeanStd(float("nan"), 0.0, 0)
