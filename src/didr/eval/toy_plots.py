"""Plots for the toy: each method's samples against q_0 and the exact optimum p*."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from didr.diffusion.mixture import TiltedDensity  # noqa: E402
from didr.eval.toy_metrics import off_data_median  # noqa: E402


def plot_densities(samples: dict[str, np.ndarray], tilted: TiltedDensity, path: Path, title: str = "") -> Path:
    """One panel per method: a histogram of its samples over q_0 (dashed) and p* (solid).
    2-D samples are drawn as scatter plots over p*'s contours."""
    n = len(samples)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    dim = tilted.mixture.dim
    for ax, (name, x) in zip(axes.flat, samples.items()):
        if dim == 1:
            grid = tilted.axes[0].numpy()
            ax.hist(x.reshape(-1), bins=120, density=True, color="tab:blue", alpha=0.55, label="samples")
            ax.plot(grid, tilted.ref_density.numpy(), "k--", lw=1, label="$q_0$ (reference)")
            ax.plot(grid, tilted.density.numpy(), "tab:red", lw=1.5, label="$p^*$ (exact optimum)")
            ax.set_xlim(grid[0], grid[-1])
        else:
            gx, gy = (a.numpy() for a in tilted.axes)
            dens = tilted.density.numpy().reshape(len(gx), len(gy)).T
            ax.contour(gx, gy, dens, levels=6, colors="tab:red", linewidths=0.8)
            ax.scatter(x[:2000, 0], x[:2000, 1], s=2, alpha=0.4)
            ax.set_aspect("equal")
        ax.set_title(name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if dim == 1:
        axes.flat[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_samples(samples: dict[str, np.ndarray], optimum, beta: float, path: Path, title: str = "") -> Path:
    """Each method's samples over the data: histograms against q_0 and p* (:func:`plot_densities`)
    in 1-D; in more dimensions, a scatter of the first two coordinates over exact samples of p* and
    the mode means (a contour plot cannot show modes this thin). Each panel's title gives the median
    off-data distance in mode stds."""

    mix = optimum.mixture
    if mix.dim == 1:
        tilted = TiltedDensity(mix, optimum.reward, beta)
        return plot_densities({f"{k} (off-data {off_data_median(v, mix):.1f})": v for k, v in samples.items()}, tilted, path, title)
    n = len(samples)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    means = mix.means.numpy()
    exact = optimum.sample(2000, beta).numpy()
    for ax, (name, x) in zip(axes.flat, samples.items()):
        x = x.reshape(len(x), -1)
        ax.scatter(exact[:, 0], exact[:, 1], s=2, color="tab:red", alpha=0.3, label=f"exact $p^*$ ($\\beta$ = {beta:g})")
        ax.scatter(x[:2000, 0], x[:2000, 1], s=2, alpha=0.4, label="samples")
        ax.plot(means[:, 0], means[:, 1], "k+", ms=6)
        ax.set_title(f"{name} (off-data {off_data_median(x, mix):.1f})", fontsize=8)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    note = "" if mix.dim == 2 else f"first two of {mix.dim} coordinates"
    fig.suptitle("; ".join(t for t in (title, note) if t), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
