"""A run's metrics: JSON lines in ``OUT/metrics.jsonl``, and scalars and images in the trackers
(``train.trackers``) through accelerate's tracker classes: TensorBoard under ``OUT/tensorboard``
when it is installed, Weights & Biases (project ``didr``, run named after OUT) when wandb is."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np


def make_trackers(out_dir: Path, names: Sequence[str]) -> list:
    """Started accelerate trackers for the names whose package is installed (the others are skipped:
    metrics.jsonl holds everything)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is not None:
        trackers.append(TensorBoardTracker("tensorboard", str(out_dir)))
    if "wandb" in names and importlib.util.find_spec("wandb") is not None:
        trackers.append(WandBTracker("didr", name=out_dir.name, dir=str(out_dir)))
    for tracker in trackers:
        tracker.start()
    return trackers


class MetricsLog:
    """Metrics as JSON lines, and in the trackers."""

    def __init__(self, out_dir: Path | None, trackers: Sequence[str] = ("tensorboard",)):
        self.file = None
        self.trackers: list = []
        if out_dir is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a")
        self.trackers = make_trackers(out_dir, trackers)

    @staticmethod
    def truncate(out_dir: Path, step: int) -> None:
        """Drop the records after ``step``: a resumed run writes them again."""
        path = out_dir / "metrics.jsonl"
        if path.is_file():
            keep = [line for line in path.read_text().splitlines() if _record_step(line) <= step]
            path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, logs: dict[str, float]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **logs}) + "\n")
            self.file.flush()
        for tracker in self.trackers:
            tracker.log({k: float(v) for k, v in logs.items()}, step=step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """(H, W, 3) uint8 images, one per name (a sample grid)."""
        for tracker in self.trackers if images else []:
            if tracker.name == "tensorboard":  # SummaryWriter.add_images takes one (N, H, W, C) array
                tracker.log_images({k: v[None] for k, v in images.items()}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({k: [v] for k, v in images.items()}, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        for tracker in self.trackers:
            tracker.finish()


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # an unreadable (half-written) line goes


#: the curves a run's plot shows, each in its own panel when the run logged it
CURVES = (("reward", "training reward (training batches)"), ("ta_loss", "TA loss"), ("generator_loss", "generator loss"))


def plot_run_curves(out_dir: Path) -> Path | None:
    """``OUT/curves.png`` from ``metrics.jsonl``: the training reward, the TA and generator losses,
    and the held-out evaluation's rewards, diversity and drift, one panel each."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip() and math.isfinite(_record_step(line))]
    keys = [k for k, _ in CURVES] + sorted({k for r in records for k in r if k.startswith("eval/")})
    panels = [(k, dict(CURVES).get(k, "held-out " + k.removeprefix("eval/"))) for k in keys if any(k in r for r in records)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="o" if key.startswith("eval/") else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)
    return out_dir / "curves.png"
