"""Plots for the toy: each method's density against q_0 and p*, and the reward-distance Pareto plot."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from didr.diffusion.mixture import TiltedDensity  # noqa: E402


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


def plot_pareto(points: list[dict], frontier: dict[str, list[float]], path: Path) -> Path:
    """Left: mean reward against KL(p || q_0), with the exact RLHF frontier traced by p*_beta (M6).
    Right: mean reward against W1 to the exact optimum with the same mean reward."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(frontier["kl_to_q0"], frontier["mean_reward"], "k-", lw=1, label=r"exact optimum $p^*_\beta$")
    styles = {"didr": ("tab:red", "o"), "dipp": ("tab:blue", "s"), "refl": ("tab:green", "^"), "di": ("gray", "x")}
    for method in dict.fromkeys(p["method"] for p in points):
        pts = [p for p in points if p["method"] == method]
        color, marker = styles.get(method, ("tab:purple", "d"))
        kl = [p["kl_to_q0"] for p in pts]
        r = [p["mean_reward"] for p in pts]
        w1 = [p["w1_to_matched_pstar"] for p in pts]
        ax1.plot(kl, r, marker=marker, color=color, ls="", label=method)
        ax2.plot(w1, r, marker=marker, color=color, ls="", label=method)
        for p, x, y in zip(pts, kl, r):
            ax1.annotate(p["label"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax1.set_xlabel(r"KL(samples $\|$ $q_0$)")
    ax1.set_ylabel("mean reward")
    ax1.set_title("reward vs. distance from the reference")
    ax2.set_xlabel(r"W1 to the exact $p^*$ with equal mean reward")
    ax2.set_title("distance to the optimum at equal reward")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
