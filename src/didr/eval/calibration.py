"""Calibration: does a DIDR run land on the optimum of the beta it was given (docs/method.md §7)?

DIDR's target is p*_beta, proportional to p_ref exp(r / beta) (M6). A run's mean reward R implies
the temperature beta' whose optimum has mean reward R; a calibrated run has beta' = beta, and its
mean reward equals the optimum's at beta. Each frontier report tabulates, per DIDR setting, the
beta it was given against every seed's beta', and plots them
(:func:`didr.eval.frontier_plots.plot_calibration`).

    rows = [Calibrated("didr", "beta=0.72", 0.72, primes=[0.87, 0.6, 0.77], rewards=[...], target=0.798)]
    print(calibration_table(rows))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from didr.eval.frontier import mean_interval


def beta_of(setting: str) -> float:
    """The temperature named by a setting label: 'beta=0.36', 'b=0.5', 'b=inf' -> 0.36, 0.5, inf."""
    text = setting.rsplit("=", 1)[-1].split()[0]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"setting {setting!r} names no temperature") from None


@dataclass
class Calibrated:
    """One DIDR setting: the beta it was given, each seed's beta' and mean reward, and the optimum's
    mean reward at beta (``target``; NaN where no optimum of the given beta is known)."""

    method: str
    setting: str
    beta: float
    primes: list[float]
    rewards: list[float]
    target: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)  # further columns, e.g. another estimate of the target

    @property
    def ratio(self) -> float:
        """beta' / beta, the geometric mean over the seeds whose beta' is finite."""
        finite = [b for b in self.primes if math.isfinite(b) and b > 0]
        if not finite or not math.isfinite(self.beta):
            return math.nan
        return float(np.exp(np.mean(np.log(finite)))) / self.beta


def _num(v: float, fmt: str = "{:.3g}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else ("inf" if v == math.inf else fmt.format(v))


def calibration_table(rows: list[Calibrated], target_name: str = "the optimum's at beta", relative: bool = True) -> str:
    """Markdown: per setting, beta, every seed's beta', their ratio, the mean reward against the
    optimum's at beta, and the gap (absolute, and with ``relative`` as a percentage where the
    optimum's reward is positive: for rewards with a natural zero)."""
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    head = ["method", "beta given", "beta' per seed", "beta' / beta", "mean reward", target_name, *extra, "reward - target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mean, half = mean_interval(r.rewards)
        gap = mean - r.target
        rel = f" ({100 * gap / r.target:+.1f}%)" if relative and math.isfinite(gap) and r.target > 0 else ""
        cells = [r.method, _num(r.beta), ", ".join(_num(b) for b in r.primes), _num(r.ratio, "{:.2f}"),
                 _num(mean, "{:.4g}") + ("" if not math.isfinite(half) else f" ± {half:.2g}"), _num(r.target, "{:.4g}"),
                 *(_num(r.extra.get(k, math.nan), "{:.4g}") for k in extra), _num(gap, "{:+.3g}") + rel]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_series(rows: list[Calibrated]) -> dict[str, list[tuple[float, list[float]]]]:
    """The plot's input: per method, (beta, every seed's beta') for each finite beta."""
    out: dict[str, list[tuple[float, list[float]]]] = {}
    for r in rows:
        if math.isfinite(r.beta):
            out.setdefault(r.method, []).append((r.beta, list(r.primes)))
    return out
