"""Figures for image benchmarks: sample grids and the reward-against-FID Pareto plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def tile(images: Tensor, nrow: int) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> one (rows*H, nrow*W) array in [0, 1] with 1-pixel gaps."""
    x = ((images.detach().clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
    n, h, w = x.shape
    rows = -(-n // nrow)
    out = np.ones((rows * (h + 1) - 1, nrow * (w + 1) - 1))
    for i in range(n):
        r, c = divmod(i, nrow)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = x[i]
    return out


def save_grid(images: Tensor, path: str | Path, nrow: int = 10, title: str | None = None) -> None:
    """Save a grid of digit images (ink dark on white), one class per column when the images are
    ordered class-major."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = tile(images, nrow)
    fig, ax = plt.subplots(figsize=(nrow * 0.45, grid.shape[0] / grid.shape[1] * nrow * 0.45 + (0.3 if title else 0)))
    ax.imshow(1 - grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def pareto_plot(rows: list[dict], path: str | Path, reward_key: str = "reward", fid_keys: tuple[str, ...] = ("fid_real", "fid_opt")) -> None:
    """Reward (up) against each FID (left is better), one panel per FID, one colour per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    families = sorted({r["family"] for r in rows})
    colours = {f: plt.cm.tab10(i) for i, f in enumerate(families)}
    fig, axes = plt.subplots(1, len(fid_keys), figsize=(5.5 * len(fid_keys), 4.2))
    for ax, key in zip(np.atleast_1d(axes), fid_keys):
        for fam in families:
            pts = [r for r in rows if r["family"] == fam]
            ax.plot([r[key] for r in pts], [r[reward_key] for r in pts], "o-" if len(pts) > 1 else "o", color=colours[fam], label=fam, ms=5)
            for r in pts:
                ax.annotate(r["label"], (r[key], r[reward_key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")  # reward-hacked runs sit orders of magnitude to the right
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(key.replace("_", " ") + " (lower is better, log scale)")
        ax.set_ylabel(reward_key + " (higher is better)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
