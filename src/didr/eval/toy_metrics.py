"""Distances between generator samples and the exact densities of the toy (q_0 and p*, M6).

Densities live on the quadrature grid of :class:`didr.diffusion.mixture.TiltedDensity`. In 1-D,
W1 is exact for the empirical distribution: the integral of |F_samples - F| over the grid. In 2-D
it is the sliced W1 (mean over random directions). KL(samples || density) uses a Gaussian KDE
of the samples (Silverman's bandwidth) on the same grid; its smoothing bias is reported
alongside, as the KL of exact p* samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import wasserstein_distance

from didr.diffusion.mixture import TiltedDensity


def _grid_hist(samples: np.ndarray, tilted: TiltedDensity) -> np.ndarray:
    """KDE of the samples on the grid: a histogram blurred by a Gaussian of Silverman's width."""
    axes = [ax.numpy() for ax in tilted.axes]
    steps = [ax[1] - ax[0] for ax in axes]
    edges = [np.concatenate([ax - h / 2, [ax[-1] + h / 2]]) for ax, h in zip(axes, steps)]
    hist, _ = np.histogramdd(samples, bins=edges)
    n, d = samples.shape
    bw = samples.std(0) * (4 / ((d + 2) * n)) ** (1 / (d + 4))
    density = gaussian_filter(hist, sigma=[b / h for b, h in zip(bw, steps)], mode="constant")
    cell = math.prod(steps)
    return density.reshape(-1) / (density.sum() * cell)


def kl_to_density(samples: np.ndarray, tilted: TiltedDensity, target: np.ndarray) -> float:
    """KL(p_samples || target) on the grid; cells where the KDE is ~0 contribute nothing."""
    p = _grid_hist(samples, tilted)
    q = np.maximum(target, 1e-300)
    mask = p > 1e-12
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])) * tilted.cell)


def w1_to_density(samples: np.ndarray, tilted: TiltedDensity, target: np.ndarray, n_proj: int = 64, seed: int = 0) -> float:
    if samples.shape[1] == 1:
        x = tilted.axes[0].numpy()
        h = x[1] - x[0]
        cdf_target = np.cumsum(target) * h
        cdf_target /= cdf_target[-1]
        cdf_samples = np.searchsorted(np.sort(samples[:, 0]), x, side="right") / len(samples)
        return float(np.sum(np.abs(cdf_samples - cdf_target)) * h)
    # 2-D: sliced W1 against many grid samples of the target
    rng = np.random.default_rng(seed)
    probs = target / target.sum()
    idx = rng.choice(len(probs), size=100_000, p=probs)
    ref = tilted.points.numpy()[idx]
    dirs = rng.normal(size=(n_proj, samples.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return float(np.mean([wasserstein_distance(samples @ u, ref @ u) for u in dirs]))


def toy_metrics(samples: torch.Tensor | np.ndarray, tilted: TiltedDensity, reward) -> dict[str, float]:
    """Figures for one set of samples: reward, fraction past x > 0, distances to p* and q_0."""
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    xt = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        r = reward(xt).double().numpy()
    pstar, q0 = tilted.density.numpy(), tilted.ref_density.numpy()
    # low-density regions: where p* is under 1% of its peak (between and beyond the modes)
    low = _low_density_mask(x, tilted, pstar)
    return {
        "frac_positive": float((x[:, 0] > 0).mean()),
        "mean_reward": float(r.mean()),
        "w1_to_pstar": w1_to_density(x, tilted, pstar),
        "kl_to_pstar": kl_to_density(x, tilted, pstar),
        "w1_to_q0": w1_to_density(x, tilted, q0),
        "kl_to_q0": kl_to_density(x, tilted, q0),
        "low_density_mass": float(low.mean()),
    }


def _low_density_mask(x: np.ndarray, tilted: TiltedDensity, density: np.ndarray) -> np.ndarray:
    axes = [ax.numpy() for ax in tilted.axes]
    idx = [np.clip(np.searchsorted(ax, x[:, d]), 0, len(ax) - 1) for d, ax in enumerate(axes)]
    flat = np.ravel_multi_index(idx, [len(ax) for ax in axes])
    return density[flat] < 0.01 * density.max()


def exact_metrics(tilted: TiltedDensity, which: str = "pstar") -> dict[str, float]:
    """The same figures computed from the exact density itself (no sampling)."""
    dens = tilted.density if which == "pstar" else tilted.ref_density
    dens = dens / (dens.sum() * tilted.cell)
    pos = (tilted.points[:, 0] > 0).double()
    low = tilted.density < 0.01 * tilted.density.max()
    return {
        "frac_positive": float((dens * pos).sum() * tilted.cell),
        "mean_reward": float((dens * tilted.rewards).sum() * tilted.cell),
        "low_density_mass": float((dens * low).sum() * tilted.cell),
    }
