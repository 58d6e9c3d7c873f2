"""How far generator samples are from the toy's exact optimum p* (M6), split into parts.

- ``w1``: W1 to exact samples of p* in 1-D; the sliced W1 (mean over random directions) in more.
- ``mode_tv``: total variation between the mode weights (the fraction of samples whose nearest mode
  is k) and the exact ones: does the run put the right mass on each mode?
- ``off_data``: each sample's distance to its nearest mode mean, in units of that mode's std; its
  median, minus that of exact samples: does the run leave the data? (Exact samples of an isotropic
  Gaussian sit at a median of about sqrt(d - 2/3) stds: 1.18 in 2-D.)

"Error at equal reward" (docs/method.md §7) measures them against p*_beta', where beta' gives the exact
optimum the run's own mean reward (:meth:`didr.diffusion.optimum.Optimum.fit_beta`); the optimum
itself scores zero at every reward, up to the sampling floor of ``n`` samples, which
:func:`sampling_floor` reports.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from didr.diffusion.mixture import GaussianMixture, TiltedDensity
from didr.diffusion.optimum import Optimum

N_REFERENCE = 50_000  # at most this many exact samples for the W1 and off-data figures to compare against
N_PROJECTIONS = 64


def _np(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.astype(np.float64).reshape(len(x), -1)


def nearest_mode(samples, mixture: GaussianMixture) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the index of the nearest mode mean in units of each mode's std, and that distance."""
    x = torch.as_tensor(_np(samples))
    idx, dist = [], []
    for chunk in x.split(16384):
        d = torch.cdist(chunk, mixture.means) / mixture.stds[None]
        best = d.min(1)
        idx.append(best.indices)
        dist.append(best.values)
    return torch.cat(idx).numpy(), torch.cat(dist).numpy()


def mode_fractions(samples, mixture: GaussianMixture) -> np.ndarray:
    idx, _ = nearest_mode(samples, mixture)
    return np.bincount(idx, minlength=len(mixture.weights)) / len(idx)


def off_data_median(samples, mixture: GaussianMixture) -> float:
    return float(np.median(nearest_mode(samples, mixture)[1]))


def sliced_w1(x, y, n_proj: int = N_PROJECTIONS, seed: int = 0) -> float:
    """W1 between two sample sets in 1-D; in d > 1 the mean W1 of their projections on
    ``n_proj`` random unit directions (fixed by ``seed``, so every run sees the same ones)."""
    x, y = _np(x), _np(y)
    if x.shape[1] == 1:
        return float(wasserstein_distance(x[:, 0], y[:, 0]))
    dirs = np.random.default_rng(seed).normal(size=(x.shape[1], n_proj))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = np.sort(x @ dirs, axis=0), np.sort(y @ dirs, axis=0)
    # W1 of 1-D empirical measures of different sizes: their quantile functions on a common grid
    n = max(len(px), len(py))
    q = (np.arange(n) + 0.5) / n
    qx = px[np.minimum((q * len(px)).astype(int), len(px) - 1)]
    qy = py[np.minimum((q * len(py)).astype(int), len(py) - 1)]
    return float(np.abs(qx - qy).mean())


def w1_to_density(samples: np.ndarray, tilted: TiltedDensity, target: np.ndarray, n_proj: int = N_PROJECTIONS, seed: int = 0) -> float:
    """W1 between samples (N, d) and a density given on ``tilted``'s grid (1-D or 2-D), e.g. its
    ``ref_density`` q_0: exact through the CDFs in 1-D, sliced W1 against 100,000 grid draws in 2-D."""
    if samples.shape[1] == 1:
        x = tilted.axes[0].numpy()
        h = x[1] - x[0]
        cdf_target = np.cumsum(target) * h
        cdf_target /= cdf_target[-1]
        cdf_samples = np.searchsorted(np.sort(samples[:, 0]), x, side="right") / len(samples)
        return float(np.sum(np.abs(cdf_samples - cdf_target)) * h)
    rng = np.random.default_rng(seed)
    probs = target / target.sum()
    ref = tilted.points.numpy()[rng.choice(len(probs), size=100_000, p=probs)]
    return sliced_w1(samples, ref, n_proj, seed)


def frac_positive(samples, reward) -> float:
    """The fraction past the reward's boundary, w . x > 0 (x > 0 for the 1-D toy)."""
    x = _np(samples)
    w = reward.direction(x.shape[1]).numpy() if hasattr(reward, "direction") else np.eye(x.shape[1])[0]
    return float((x @ w > 0).mean())


def mean_reward(samples, reward) -> float:
    with torch.no_grad():
        return float(reward(torch.as_tensor(_np(samples), dtype=torch.float32)).double().mean())


def distances(samples, optimum: Optimum, beta: float, n_ref: int | None = None, seed: int = 0) -> dict[str, float]:
    """W1 / sliced W1, mode-weight TV and off-data excess of ``samples`` against p*_beta, using
    ``n_ref`` exact samples (default: five times as many as ``samples``, 10,000 to N_REFERENCE)."""
    n_ref = n_ref or min(N_REFERENCE, max(10_000, 5 * len(samples)))
    exact = optimum.sample(n_ref, beta, torch.Generator().manual_seed(seed))
    mix = optimum.mixture
    return {
        "w1": sliced_w1(samples, exact, seed=seed),
        "mode_tv": 0.5 * float(np.abs(mode_fractions(samples, mix) - optimum.mode_weights(beta).numpy()).sum()),
        "off_data": off_data_median(samples, mix) - off_data_median(exact, mix),
    }


def error_at_equal_reward(samples, optimum: Optimum, reward, n_ref: int | None = None, seed: int = 0) -> dict[str, float]:
    """The run's distances to p*_beta', where beta' gives the exact optimum the run's mean reward."""
    r = mean_reward(samples, reward)
    beta = optimum.fit_beta(r)
    out = {"beta_equal": beta, **{f"{k}_equal": v for k, v in distances(samples, optimum, beta, n_ref, seed).items()}}
    ess = optimum.ess(beta)
    if math.isfinite(ess):
        out["ess_equal"] = ess
    return out


def toy_metrics(samples, optimum: Optimum, reward, beta: float, n_ref: int | None = None, seed: int = 0) -> dict[str, float]:
    """Every figure of one set of samples: reward, fraction past the boundary, off-data median,
    distances to p* at ``beta`` (the run's configured temperature) and at equal reward."""
    own = distances(samples, optimum, beta, n_ref, seed)
    return {
        "frac_positive": frac_positive(samples, reward),
        "mean_reward": mean_reward(samples, reward),
        "off_data_median": off_data_median(samples, optimum.mixture),
        "w1_to_pstar": own["w1"],
        "mode_tv_to_pstar": own["mode_tv"],
        **error_at_equal_reward(samples, optimum, reward, n_ref, seed),
    }


def sampling_floor(optimum: Optimum, reward, beta: float, n: int, n_ref: int | None = None, seed: int = 1) -> dict[str, float]:
    """What a perfect run scores: the errors at equal reward of ``n`` exact samples of p*_beta,
    measured exactly as a run's are (their own beta' fitted from their mean reward)."""
    exact = optimum.sample(n, beta, torch.Generator().manual_seed(seed + 1000))
    out = error_at_equal_reward(exact, optimum, reward, n_ref, seed)
    return {k[: -len("_equal")]: v for k, v in out.items() if k in ("w1_equal", "mode_tv_equal", "off_data_equal")}


def exact_figures(optimum: Optimum, beta: float) -> dict[str, float]:
    """Exact figures of p*_beta: its mean reward and mode weights (and ESS for importance sampling)."""
    out = {"mean_reward": optimum.mean_reward(beta), "mode_weights": [round(float(v), 5) for v in optimum.mode_weights(beta)]}
    if math.isfinite(optimum.ess(beta)):
        out["ess"] = optimum.ess(beta)
    return out
