"""Intervals for scores laid out as (prompts, seeds): every interval is a percentile bootstrap over
prompts, a prompt carrying all its seeds, so that two generators scored on the same prompts and
seeds are compared pair by pair (the seeds give both the same initial noise).

- :func:`mean_interval`: a generator's mean score;
- :func:`difference_interval`: the mean of the paired per-image difference of two generators;
- :func:`win_rate_interval`: how often one generator's image scores above the other's on the same
  prompt and seed (a tie counts one half).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

LEVEL = 0.95
BOOTSTRAPS = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float = LEVEL

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}

    def format(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def as_grid(values) -> np.ndarray:
    """Scores as a (prompts, seeds) float64 array; refuses anything else or non-finite scores."""
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"scores must be a non-empty (prompts, seeds) array, got shape {grid.shape}")
    if not np.isfinite(grid).all():
        raise ValueError("scores hold NaN or inf")
    return grid


def bootstrap(grid: np.ndarray, statistic: Callable[[np.ndarray], float], boots: int = BOOTSTRAPS, seed: int = 0,
              level: float = LEVEL) -> Interval:
    """``statistic`` of the (prompts, seeds) grid, with a percentile interval from resampling prompts."""
    rng = np.random.default_rng(seed)
    prompts = grid.shape[0]
    if statistic is np.mean:  # a resample's mean is the mean of its rows' means: every resample at once, the same draws
        draws = grid.mean(1)[rng.integers(0, prompts, (boots, prompts))].mean(1)
    else:
        draws = np.array([statistic(grid[rng.integers(0, prompts, prompts)]) for _ in range(boots)])
    tail = (1 - level) / 2
    return Interval(float(statistic(grid)), float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)), level)


def mean_interval(scores, **kw) -> Interval:
    return bootstrap(as_grid(scores), np.mean, **kw)


def difference_interval(a, b, **kw) -> Interval:
    """Mean of a - b over paired images (same prompt, same seed)."""
    a, b = as_grid(a), as_grid(b)
    _same_layout(a, b)
    return bootstrap(a - b, np.mean, **kw)


def win_rate_interval(a, b, **kw) -> Interval:
    """P(a's image scores above b's on the same prompt and seed), ties counting one half."""
    a, b = as_grid(a), as_grid(b)
    _same_layout(a, b)
    wins = (a > b) + 0.5 * (a == b)
    return bootstrap(wins.astype(np.float64), np.mean, **kw)


def _same_layout(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same prompts and seeds, got shapes {a.shape} and {b.shape}")
