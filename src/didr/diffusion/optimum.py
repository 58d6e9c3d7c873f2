"""The exact optimum p*_beta ∝ q_0 exp(r / beta) (M6) of a Gaussian mixture, at every temperature,
and the temperature whose optimum has a given mean reward (docs/method.md §7, "distance at equal reward").

Three ways to compute it, each building its pieces once so that any beta costs one reweighting:

- :class:`LinearOptimum`: r = w . x, closed form in any dimension (M14);
- :class:`GridOptimum`: any reward in 1-D or 2-D, quadrature on a grid (:class:`TiltedDensity`);
- :class:`SampledOptimum`: any reward in any dimension, self-normalised importance sampling from
  q_0 itself (a pool of samples with their component labels), with its effective sample size.

:func:`exact_optimum` picks the first that applies. ``beta = inf`` is q_0 itself: the mean reward
of p*_beta falls monotonically as beta grows (d/dbeta E[r] = -Var[r] / beta^2), from the reward's
maximum towards E_q0[r], which is what :meth:`Optimum.fit_beta` inverts by bisection.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from didr.diffusion.mixture import GaussianMixture, TiltedDensity

BETA_RANGE = (1e-3, 1e3)


class Optimum:
    """p*_beta for one mixture and reward, every beta > 0 (``math.inf``: q_0)."""

    method = "exact"

    def __init__(self, mixture: GaussianMixture, reward):
        self.mixture, self.reward = mixture, reward

    def mean_reward(self, beta: float) -> float:  # pragma: no cover
        raise NotImplementedError

    def mode_weights(self, beta: float) -> Tensor:  # pragma: no cover
        """The mass each mixture component carries under p*_beta, (K,)."""
        raise NotImplementedError

    def sample(self, n: int, beta: float, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        """n samples of p*_beta, (n, d) float64."""
        raise NotImplementedError

    def ess(self, beta: float) -> float:
        """Effective sample size behind the figures at beta (inf where they are exact)."""
        return math.inf

    def fit_beta(self, mean_reward: float, iterations: int = 60) -> float:
        """beta' with E_{p*_beta'}[r] = ``mean_reward``, by bisection on log beta within BETA_RANGE.

        Returns inf when the reward is at or below q_0's (no tilt reaches it from above), and the
        range's end when it lies beyond what the range reaches.
        """
        lo, hi = (math.log(b) for b in BETA_RANGE)
        if mean_reward <= self.mean_reward(math.inf):
            return math.inf
        if mean_reward >= self.mean_reward(math.exp(lo)):
            return math.exp(lo)
        if mean_reward <= self.mean_reward(math.exp(hi)):
            return math.exp(hi)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if self.mean_reward(math.exp(mid)) > mean_reward:
                lo = mid  # too much reward: a higher temperature
            else:
                hi = mid
        return math.exp(0.5 * (lo + hi))


class LinearOptimum(Optimum):
    """r = w . x: p*_beta is again a mixture (M14), in any dimension."""

    method = "closed form (M14)"

    def __init__(self, mixture: GaussianMixture, reward):
        super().__init__(mixture, reward)
        self.w = reward.direction(mixture.dim)

    def at(self, beta: float) -> GaussianMixture:
        return self.mixture if math.isinf(beta) else self.mixture.linear_tilt(self.w, beta)

    def mean_reward(self, beta: float) -> float:
        p = self.at(beta)
        return float(p.weights @ (p.means @ self.w))

    def mode_weights(self, beta: float) -> Tensor:
        return self.at(beta).weights

    def sample(self, n, beta, generator=None):
        return self.at(beta).sample(n, generator)


class GridOptimum(Optimum):
    """Any reward in 1-D / 2-D: quadrature on the grid of :class:`TiltedDensity`, built once."""

    method = "quadrature"

    def __init__(self, mixture: GaussianMixture, reward, points_per_dim: int | None = None):
        super().__init__(mixture, reward)
        self.grid = TiltedDensity(mixture, reward, 1.0, points_per_dim)
        self.cache: dict[float, TiltedDensity] = {}

    def at(self, beta: float) -> TiltedDensity:
        if beta not in self.cache:
            self.cache = {beta: self.grid.at(beta)}  # bisection moves on: keep the last one only
        return self.cache[beta]

    def mean_reward(self, beta):
        if math.isinf(beta):
            g = self.grid
            return float((g.ref_density * g.rewards).sum() * g.cell)
        return self.at(beta).mean_reward()

    def mode_weights(self, beta):
        return self.mixture.weights if math.isinf(beta) else self.at(beta).mode_weights()

    def sample(self, n, beta, generator=None):
        return self.mixture.sample(n, generator) if math.isinf(beta) else self.at(beta).sample(n, generator)


class SampledOptimum(Optimum):
    """Any reward in any dimension: a pool x_i ~ q_0 (with component labels) weighted by
    w_i ∝ exp(r(x_i) / beta), normalised in log space. Figures carry the effective sample size
    (sum w)^2 / sum w^2; samples of p*_beta are drawn from the pool by those weights."""

    method = "importance sampling"

    def __init__(self, mixture: GaussianMixture, reward, pool: int = 200_000, seed: int = 0):
        super().__init__(mixture, reward)
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.multinomial(mixture.weights, pool, replacement=True, generator=gen)
        eps = torch.randn(pool, mixture.dim, generator=gen, dtype=torch.float64)
        self.pool = mixture.means[self.labels] + mixture.stds[self.labels, None] * eps
        with torch.no_grad():
            self.rewards = torch.cat([torch.as_tensor(reward(x.float())).to(torch.float64) for x in self.pool.split(65536)])

    def weights(self, beta: float) -> Tensor:
        if math.isinf(beta):
            return torch.full_like(self.rewards, 1.0 / len(self.rewards))
        return torch.softmax(self.rewards / beta, 0)

    def mean_reward(self, beta):
        return float(self.weights(beta) @ self.rewards)

    def mode_weights(self, beta):
        return torch.zeros(len(self.mixture.weights), dtype=torch.float64).index_add_(0, self.labels, self.weights(beta))

    def ess(self, beta):
        w = self.weights(beta)
        return float(1.0 / (w**2).sum())

    def sample(self, n, beta, generator=None):
        idx = torch.multinomial(self.weights(beta), n, replacement=True, generator=generator)
        return self.pool[idx]


def exact_optimum(mixture: GaussianMixture, reward, **kw) -> Optimum:
    """Closed form for linear rewards, a grid in 1-D / 2-D, importance sampling otherwise. A reward
    says it is linear, r = w . x, with ``is_linear = True`` and gives w as ``direction(dim)``."""
    if getattr(reward, "is_linear", False):
        return LinearOptimum(mixture, reward)
    if mixture.dim <= 2:
        return GridOptimum(mixture, reward, **kw)
    return SampledOptimum(mixture, reward, **kw)
