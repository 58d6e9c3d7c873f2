"""Gaussian mixtures with isotropic components: the ground truth for every estimator.

Under (M1) a mixture stays a mixture: component k of q_t has mean a mu_k and variance
a^2 sigma_k^2 + s^2, so the noised score, the posterior mean (M2) and the posterior
p(x_0 | x_t) itself are closed form. With a reward, the tilted optimum p* (M6) has an exact
density up to Z, computed by quadrature in 1-D and 2-D (:class:`TiltedDensity`), and in closed form
for linear rewards in any dimension (:meth:`GaussianMixture.linear_tilt`, M14). A mixture can be
read from a small YAML or JSON file (:meth:`GaussianMixture.from_file`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from didr.config import read_yaml
from didr.diffusion.denoiser import Denoiser, per_sample_time
from didr.diffusion.schedules import NoiseSchedule, broadcast_to
from didr.errors import ConfigError


@dataclass
class MixturePosterior:
    """p(x_0 | x_t) = sum_k w_k N(m_k, v_k I), batched: weights (B, K), means (B, K, D), vars (B, K)."""

    weights: Tensor
    means: Tensor
    variances: Tensor

    def mean(self) -> Tensor:
        return torch.einsum("bk,bkd->bd", self.weights, self.means)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples per batch entry: (n, B, D)."""
        b, k, d = self.means.shape
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator).T  # (n, B)
        idx = torch.arange(b).expand(n, b)
        mu = self.means[idx, comp]
        std = self.variances[idx, comp].sqrt().unsqueeze(-1)
        return mu + std * torch.randn(n, b, d, generator=generator, dtype=mu.dtype)


class GaussianMixture:
    """sum_k w_k N(mu_k, sigma_k^2 I) in D dimensions (float64 for exact answers)."""

    def __init__(self, means, stds, weights):
        means = _as_matrix(means)
        stds = _as_vector(stds, "stds")
        weights = _as_vector(weights, "weights")
        k = means.shape[0]
        if not (stds.numel() == weights.numel() == k):
            raise ConfigError(f"mixture needs as many stds and weights as means ({k}); got {stds.numel()} and {weights.numel()}")
        if (stds <= 0).any():
            raise ConfigError(f"mixture stds must be > 0, got {stds.tolist()}")
        if (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-6:
            raise ConfigError(f"mixture weights must be >= 0 and sum to 1, got {weights.tolist()} (sum {float(weights.sum()):.6g})")
        self.means, self.stds, self.weights = means, stds, weights

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def from_file(cls, path: str | Path) -> "GaussianMixture":
        """Read ``means`` (K lists of d numbers), ``stds`` (K) and ``weights`` (K, summing to 1)
        from a YAML or JSON file (JSON is YAML); any problem is one ConfigError naming the file."""
        return cls(*read_mixture_file(path))

    def to_lists(self) -> tuple[list[list[float]], list[float], list[float]]:
        return self.means.tolist(), self.stds.tolist(), self.weights.tolist()

    def linear_tilt(self, w: Tensor, beta: float) -> "GaussianMixture":
        """The exact optimum (M6) for r(x) = w . x, in any dimension (M14): component k moves to
        mu_k + sigma_k^2 w / beta, its weight to pi_k exp(w . mu_k / beta + sigma_k^2 |w|^2 / (2 beta^2))."""
        w = torch.as_tensor(w, dtype=torch.float64).reshape(-1)
        var = self.stds**2
        logits = self.weights.log() + self.means @ w / beta + var * float(w @ w) / (2 * beta**2)
        return GaussianMixture(self.means + var[:, None] * w / beta, self.stds, torch.softmax(logits, 0))

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 3.0, std: float = 0.3) -> "GaussianMixture":
        ang = torch.arange(n_modes, dtype=torch.float64) * 2 * math.pi / n_modes
        means = torch.stack([radius * ang.cos(), radius * ang.sin()], dim=1)
        return cls(means, [std] * n_modes, [1.0 / n_modes] * n_modes)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp, None] * eps

    def _noised(self, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Means (B, K, D) and variances (B, K) of q_t for per-sample a, s of shape (B,)."""
        means = a[:, None, None] * self.means[None]
        var = a[:, None] ** 2 * self.stds[None] ** 2 + s[:, None] ** 2
        return means, var

    def _log_resp(self, x: Tensor, means: Tensor, var: Tensor) -> Tensor:
        d = self.dim
        sq = ((x[:, None, :] - means) ** 2).sum(-1)
        return self.weights.log()[None] - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)

    def log_prob(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64).reshape(x.shape[0], self.dim)
        one = torch.ones(x.shape[0], dtype=torch.float64)
        means, var = self._noised(one, 0 * one)
        return torch.logsumexp(self._log_resp(x, means, var), dim=1)

    def noised_log_prob(self, x_t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        means, var = self._noised(a, s)
        return torch.logsumexp(self._log_resp(x_t, means, var), dim=1)

    def posterior(self, x_t: Tensor, a: Tensor, s: Tensor) -> MixturePosterior:
        """p(x_0 | x_t): component k has precision 1/sigma_k^2 + a^2/s^2 and responsibility
        w_k N(x_t; a mu_k, a^2 sigma_k^2 + s^2)."""
        x_t = x_t.to(torch.float64)
        a, s = a.to(torch.float64), s.to(torch.float64)
        means_t, var_t = self._noised(a, s)
        resp = torch.softmax(self._log_resp(x_t, means_t, var_t), dim=1)
        prec = 1 / self.stds[None] ** 2 + (a[:, None] / s[:, None]) ** 2
        var = 1 / prec
        mean = var[..., None] * (self.means[None] / self.stds[None, :, None] ** 2 + (a / s**2)[:, None, None] * x_t[:, None, :])
        return MixturePosterior(resp, mean, var)

    def posterior_mean(self, x_t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        return self.posterior(x_t, a, s).mean()


def _as_matrix(means) -> Tensor:
    """K x d means; a flat list is K one-dimensional means. Rows of unequal length are refused."""
    if isinstance(means, (list, tuple)) and means and all(isinstance(m, (list, tuple)) for m in means):
        lengths = sorted({len(m) for m in means})
        if len(lengths) > 1 or lengths[0] == 0:
            raise ConfigError(f"mixture means must be K lists of d numbers each, got rows of lengths {[len(m) for m in means]}")
    try:
        out = torch.as_tensor(means, dtype=torch.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"mixture means must be numbers (K, or K lists of d), got {means!r}") from None
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] == 0:
        raise ConfigError(f"mixture means must be K numbers or K lists of d numbers, got shape {tuple(out.shape)}")
    return out


def _as_vector(values, name: str) -> Tensor:
    try:
        out = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"mixture {name} must be a list of numbers, got {values!r}") from None
    if out.ndim > 1:
        raise ConfigError(f"mixture {name} must be one number per component (a flat list), got shape {tuple(out.shape)}")
    return out.reshape(-1)


MIXTURE_FIELDS = ("means", "stds", "weights")


def read_mixture_file(path: str | Path) -> tuple:
    """(means, stds, weights) from a YAML / JSON file, checked by :class:`GaussianMixture`."""
    data = read_yaml(path, what="mixture file", fields=", ".join(MIXTURE_FIELDS))
    missing = [f for f in MIXTURE_FIELDS if f not in data]
    unknown = sorted(set(data) - set(MIXTURE_FIELDS))
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(unknown)}"
        raise ConfigError(f"mixture file {path}: {what}; expected exactly {', '.join(MIXTURE_FIELDS)}")
    try:
        GaussianMixture(data["means"], data["stds"], data["weights"])
    except ConfigError as err:
        raise ConfigError(f"mixture file {path}: {err}") from None
    return data["means"], data["stds"], data["weights"]


class MixtureDenoiser(Denoiser):
    """The exact posterior mean of a Gaussian mixture under a schedule: a Denoiser with no error."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__(schedule)
        self.mixture = mixture

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        t = per_sample_time(t, x_t)
        a, s = self.schedule.alpha(t).expand(x_t.shape[0]), self.schedule.sigma(t).expand(x_t.shape[0])
        flat = x_t.reshape(x_t.shape[0], -1)
        clean = s <= 0  # t = 0: the data itself, per sample (times may differ within a batch)
        if clean.all():
            return x_t
        out = self.mixture.posterior_mean(flat, a, torch.where(clean, torch.ones_like(s), s))
        return torch.where(broadcast_to(clean, x_t), x_t, out.to(x_t.dtype).reshape(x_t.shape))


class TiltedDensity:
    """The exact tilted optimum p*(x) ∝ q_0(x) exp(r(x) / beta) (M6) on a quadrature grid (D <= 2).

    The grid, log q_0 and r on it are computed once; :meth:`at` gives the optimum at another beta
    from the same pieces (a bisection over beta costs one softmax per step).
    """

    def __init__(self, mixture: GaussianMixture, reward, beta: float, points_per_dim: int | None = None):
        if mixture.dim > 2:
            raise ConfigError("the exact tilted density is computed on a grid, for 1-D and 2-D mixtures only")
        self.mixture, self.reward = mixture, reward
        n = points_per_dim or (20001 if mixture.dim == 1 else 401)
        lo = (mixture.means - 8 * mixture.stds[:, None]).min(0).values
        hi = (mixture.means + 8 * mixture.stds[:, None]).max(0).values
        axes = [torch.linspace(float(lo[d]), float(hi[d]), n, dtype=torch.float64) for d in range(mixture.dim)]
        self.axes = axes
        grids = torch.meshgrid(*axes, indexing="ij")
        self.points = torch.stack([g.reshape(-1) for g in grids], dim=1)
        self.cell = math.prod(float(ax[1] - ax[0]) for ax in axes)
        self.log_q = mixture.log_prob(self.points)
        with torch.no_grad():
            self.rewards = torch.as_tensor(reward(self.points.float())).to(torch.float64)
        self.ref_density = torch.exp(self.log_q)
        self._set_beta(beta)

    def _set_beta(self, beta: float) -> None:
        if not beta > 0:
            raise ConfigError(f"beta must be > 0, got {beta}")
        self.beta = beta
        log_p = self.log_q + self.rewards / beta
        self.log_z = torch.logsumexp(log_p, 0) + math.log(self.cell)
        self.density = torch.exp(log_p - self.log_z)

    def at(self, beta: float) -> "TiltedDensity":
        """The optimum at temperature ``beta`` on the same grid, without recomputing q_0 or r."""
        out = copy.copy(self)
        out._set_beta(beta)
        return out

    def mean_reward(self) -> float:
        return float((self.density * self.rewards).sum() * self.cell)

    def probability(self, mask: Tensor) -> float:
        return float((self.density * mask).sum() * self.cell)

    def mode_weights(self) -> Tensor:
        """The mass of p* that each mixture component carries: pi_k E_{q_k}[exp(r / beta)] / Z."""
        if not hasattr(self, "_log_comp"):  # (N, K) log pi_k q_k on the grid, shared by every beta
            one = torch.ones(len(self.points), dtype=torch.float64)
            means, var = self.mixture._noised(one, 0 * one)
            self._log_comp = self.mixture._log_resp(self.points, means, var)
        log_mass = torch.logsumexp(self._log_comp + (self.rewards / self.beta)[:, None], 0) + math.log(self.cell) - self.log_z
        return log_mass.exp()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact-to-grid samples: pick cells by mass, then jitter uniformly inside the cell."""
        idx = torch.multinomial(self.density / self.density.sum(), n, replacement=True, generator=generator)
        steps = torch.tensor([float(ax[1] - ax[0]) for ax in self.axes], dtype=torch.float64)
        jitter = (torch.rand(n, self.mixture.dim, generator=generator, dtype=torch.float64) - 0.5) * steps
        return self.points[idx] + jitter
