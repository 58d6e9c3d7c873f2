"""Figures for image benchmarks: sample grids (frontier plots: :func:`didr.eval.frontier.plot_frontiers`)."""

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


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8: a written figure, for the trackers."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def image_grid(columns: dict[str, list[Path]], prompts: list[str], path: str | Path, max_rows: int = 8, cell: float = 1.8) -> Path:
    """Prompts (rows, at most ``max_rows``) x generators (columns) of RGB images from files, each
    column headed by its generator and each row by its prompt (shortened), written to ``path``."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    names, rows = list(columns), min(max_rows, len(prompts))
    fig, axes = plt.subplots(rows, len(names), figsize=(cell * len(names) + 1.6, cell * rows + 0.3), squeeze=False)
    for c, name in enumerate(names):
        for r in range(rows):
            ax = axes[r][c]
            with Image.open(columns[name][r]) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(textwrap.shorten(prompts[r], 60), 22)), fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
