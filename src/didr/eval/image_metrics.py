"""Image metrics in the feature space of a classifier trained on real data.

- :func:`frechet_distance`: FID (Heusel et al. 2017) between Gaussian fits of two feature sets;
  with sample weights it compares against a reweighted set, which is how the empirical optimum
  p* of (M6) enters: held-out real images weighted by exp(r / beta) within each class
  (:func:`tilted_weights`). Weighted statistics are the expectation of those of a weighted
  resample, without the resampling noise.
- :func:`knn_precision_recall`: the k-NN manifold precision and recall of Kynkäänniemi et al. 2019.
- :func:`prompt_accuracy`: the fraction of samples classified as the digit they were asked for.
- :func:`kernel_inception_distance`: KID (Bińkowski et al. 2018), the unbiased MMD^2 with the
  cubic polynomial kernel, mean and standard deviation over random subsets.
- :func:`mean_pairwise_distance`: diversity, the mean distance between the samples of each group
  (the seeds of one prompt), averaged over groups.
- :func:`paired_drift`: the mean distance between paired features (the same prompt and noise
  through two generators).

Every function here takes features from any network (:mod:`didr.eval.features` for images).
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from didr.errors import ConfigError


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


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """KID's kernel k(x, y) = (x . y / d + 1)^3 between the rows of x (n, d) and y (m, d): (n, m)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """The unbiased MMD^2 estimate with :func:`polynomial_kernel` (Bińkowski et al. 2018, eq. 3),
    for sets of equal size m:

        sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2
    """
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off_diagonal = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(off_diagonal - 2 * kxy.sum() / m**2)


def kernel_inception_distance(a: Tensor, b: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID between feature sets a (n, d) and b (m, d): (mean, std) of :func:`mmd2_unbiased` over
    ``subsets`` pairs of subsets, each ``min(subset_size, n, m)`` rows drawn without replacement
    (the protocol of Bińkowski et al. 2018, as torch-fidelity and clean-fid run it; their defaults
    are 100 subsets of 1000). The estimate is unbiased, so two samples of one distribution give
    values around 0, negative ones included. ``std`` is over subsets (ddof 0), 0 for one subset."""
    a, b = a.double(), b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"KID needs two feature sets (n, d) of the same width, got {tuple(a.shape)} and {tuple(b.shape)}")
    size = min(subset_size, len(a), len(b))
    if size < 2 or subsets < 1:
        raise ConfigError(f"KID needs subsets >= 1 of at least 2 rows, got {subsets} of {size} (sets of {len(a)} and {len(b)})")
    gen = torch.Generator().manual_seed(seed)
    values = [mmd2_unbiased(a[torch.randperm(len(a), generator=gen)[:size]], b[torch.randperm(len(b), generator=gen)[:size]]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def mean_pairwise_distance(features: Tensor, groups: Sequence[Hashable]) -> tuple[float, dict[Hashable, float]]:
    """Diversity: for each group (the images of one prompt, one per seed), the mean Euclidean
    distance over its n (n - 1) / 2 pairs; returns (the mean over groups, {group: its value}),
    groups in order of first appearance. Every group needs at least two members."""
    f = features.double()
    if len(groups) != len(f):
        raise ConfigError(f"{len(groups)} group labels for {len(f)} features")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    per_group = {}
    for g, idx in members.items():
        if len(idx) < 2:
            raise ConfigError(f"group {g!r} has one member; diversity needs at least two (seeds) per group")
        d = torch.cdist(f[idx], f[idx], compute_mode="donot_use_mm_for_euclid_dist")  # exact: identical samples are 0 apart
        per_group[g] = float(d.triu(1).sum() / (len(idx) * (len(idx) - 1) / 2))
    if not per_group:
        raise ConfigError("no features to measure diversity on")
    return float(np.mean(list(per_group.values()))), per_group


def paired_drift(a: Tensor, b: Tensor) -> tuple[float, Tensor]:
    """Drift: the Euclidean distance between paired rows a_i and b_i (the same prompt and noise
    through two generators); returns (their mean, the (n,) distances)."""
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ConfigError(f"drift needs two paired feature sets of one shape (n, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    d = (a.double() - b.double()).norm(dim=1)
    return float(d.mean()), d
