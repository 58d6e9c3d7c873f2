"""Image metrics in the feature space of a classifier trained on real data.

- :func:`frechet_distance`: FID (Heusel et al. 2017) between Gaussian fits of two feature sets;
  with sample weights it compares against a reweighted set, which is how the empirical optimum
  p* of (M6) enters: held-out real images weighted by exp(r / beta) within each class
  (:func:`tilted_weights`). Weighted statistics are the expectation of those of a weighted
  resample, without the resampling noise.
- :func:`knn_precision_recall`: the k-NN manifold precision and recall of Kynkäänniemi et al. 2019.
- :func:`prompt_accuracy`: the fraction of samples classified as the digit they were asked for.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg
from torch import Tensor


@torch.no_grad()
def features(net, images: Tensor, batch: int = 1000) -> Tensor:
    """Penultimate-layer features of ``net`` (anything with ``.features``), in batches."""
    return torch.cat([net.features(x) for x in images.split(batch)]).double()


def gaussian_stats(feats: Tensor, weights: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``feats`` (N, D), optionally with non-negative sample weights."""
    f = feats.double()
    w = torch.full((len(f),), 1.0 / len(f), dtype=f.dtype) if weights is None else weights.double() / weights.sum()
    mu = (w[:, None] * f).sum(0)
    d = f - mu
    # unbiased for weighted samples: divide by 1 - sum w^2 (= (N-1)/N when uniform)
    cov = (w[:, None] * d).T @ d / (1 - (w**2).sum()).clamp_min(1e-12)
    return mu.numpy(), cov.numpy()


def frechet_distance(a: Tensor, b: Tensor, weights_b: Tensor | None = None) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between feature sets a and b."""
    mu1, c1 = gaussian_stats(a)
    mu2, c2 = gaussian_stats(b, weights_b)
    covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference FID code does
        eps = np.eye(len(c1)) * 1e-6
        covmean = linalg.sqrtm((c1 + eps) @ (c2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean.real))


def tilted_weights(rewards: Tensor, labels: Tensor, beta: float) -> Tensor:
    """Weights of the empirical optimum (M6), p*(x | c) proportional to p_ref(x | c) exp(r / beta),
    with held-out real images standing in for p_ref: a softmax of r / beta within each class, and
    each class keeping its share of the set (the generators sample classes in proportion)."""
    w = torch.zeros_like(rewards, dtype=torch.float64)
    if math.isinf(beta):
        return torch.full_like(w, 1.0 / len(w))
    for c in labels.unique():
        m = labels == c
        w[m] = torch.softmax(rewards[m].double() / beta, 0) * m.sum()
    return w / w.sum()


def matched_temperature(rewards: Tensor, labels: Tensor, target: float, lo: float = 1e-4, hi: float = 1e4) -> float:
    """beta' such that the empirical optimum's mean reward, sum_i w_i(beta') r_i with the weights of
    :func:`tilted_weights`, equals ``target`` (docs/method.md §7). That mean falls monotonically as
    beta' grows, so bisection in log beta' finds it. inf when ``target`` is at or below the plain
    mean (no tilt reaches less), NaN above what the smallest beta' reaches (the set's best
    images within each class)."""

    def mean_reward(beta: float) -> float:
        return float((tilted_weights(rewards, labels, beta) * rewards.double()).sum())

    if target <= mean_reward(math.inf):
        return math.inf
    if target > mean_reward(lo):
        return math.nan
    a, b = math.log(lo), math.log(hi)
    for _ in range(60):
        mid = (a + b) / 2
        a, b = (mid, b) if mean_reward(math.exp(mid)) > target else (a, mid)
    return math.exp((a + b) / 2)


def effective_sample_size(weights: Tensor) -> float:
    """(sum w)^2 / sum w^2: how many real images the tilted reference effectively rests on."""
    return float(weights.sum() ** 2 / (weights**2).sum())


def knn_precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: the fraction of fake samples inside the real manifold (the union of balls around
    each real feature reaching its k-th nearest real neighbour); recall: the converse."""
    real, fake = real.double(), fake.double()

    def radii(x: Tensor) -> Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # k + 1: the point itself is its own nearest

    def covered(x: Tensor, manifold: Tensor, r: Tensor) -> float:
        return float((torch.cdist(x, manifold) <= r[None]).any(1).double().mean())

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


@torch.no_grad()
def prompt_accuracy(classifier, images: Tensor, labels: Tensor) -> float:
    pred = torch.cat([classifier(x).argmax(1) for x in images.split(1000)])
    return float((pred == labels).double().mean())
