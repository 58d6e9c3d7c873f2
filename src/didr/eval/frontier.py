"""Reward-error frontiers over seeds, and comparisons at equal reward (docs/method.md §7).

Each method is swept over its own strength (DIDR's beta, DI++'s alpha, ReFL's regulariser weight)
and every setting is run with several seeds. A :class:`Point` holds one setting's per-seed mean
rewards and errors (distance to the optimum of equal reward, FID, ...). A method's frontier is the
piecewise-linear curve of error against reward through its points, in order of reward.

Comparisons are paired by seed: seed s of every setting shares the preparation stages (reference,
initial generator), so for each seed the two methods' frontiers are interpolated at the same
reward R and differenced; the mean difference over seeds gets a Student-t interval. Nothing is
"matched" by assumption: a reward where some seed's frontier does not reach is not compared.

    points = [Point("didr", "beta=0.5", rewards, {"w1": errors}, seeds), ...]
    cmp = compare_at_equal_reward(points, "didr", "dipp", "w1")
    print(cmp.summary())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass
class Point:
    """One setting of one method: per-seed mean reward and errors, in the order of ``seeds``."""

    method: str
    setting: str
    reward: np.ndarray
    errors: dict[str, np.ndarray]
    seeds: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.reward = np.asarray(self.reward, dtype=np.float64).reshape(-1)
        self.errors = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in self.errors.items()}
        if not self.seeds:
            self.seeds = list(range(len(self.reward)))
        for k, v in self.errors.items():
            if len(v) != len(self.reward):
                raise ValueError(f"point {self.method} {self.setting}: {len(v)} values of {k!r} for {len(self.reward)} rewards")
        if len(self.seeds) != len(self.reward):
            raise ValueError(f"point {self.method} {self.setting}: {len(self.seeds)} seeds for {len(self.reward)} rewards")

    def reward_interval(self, level: float = LEVEL) -> tuple[float, float]:
        return mean_interval(self.reward, level)

    def error_interval(self, metric: str, level: float = LEVEL) -> tuple[float, float]:
        return mean_interval(self.errors[metric], level)

    def value(self, what: str, seed: int) -> float:
        i = self.seeds.index(seed)
        return float(self.reward[i] if what == "reward" else self.errors[what][i])


def mean_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval at ``level`` (NaN half-width for one value)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return float(v[0]), math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half)


def interpolate(rewards, errors, at: float) -> float:
    """Error at reward ``at`` on the piecewise-linear curve through (reward, error) sorted by
    reward; NaN outside the rewards' range (no extrapolation)."""
    r = np.asarray(rewards, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    order = np.argsort(r, kind="stable")
    r, e = r[order], e[order]
    if len(r) == 0 or not r[0] <= at <= r[-1]:
        return math.nan
    if len(r) == 1:
        return float(e[0])
    return float(np.interp(at, r, e))


def method_points(points: list[Point], method: str) -> list[Point]:
    out = [p for p in points if p.method == method]
    if not out:
        raise ValueError(f"no points for method {method!r}; have {sorted({p.method for p in points})}")
    return out


def common_seeds(points: list[Point]) -> list[int]:
    """Seeds run at every one of ``points``, in the first point's order."""
    shared = set(points[0].seeds)
    for p in points[1:]:
        shared &= set(p.seeds)
    return [s for s in points[0].seeds if s in shared]


def seed_curve(points: list[Point], metric: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed's frontier of ``metric`` against reward (unsorted; :func:`interpolate` sorts)."""
    return np.array([p.value("reward", seed) for p in points]), np.array([p.value(metric, seed) for p in points])


@dataclass
class AtReward:
    """The difference error_a - error_b at one reward, over the seeds whose frontiers both reach it."""

    reward: float
    seeds: int
    diff: float
    half_width: float

    @property
    def margin(self) -> float:
        """|difference| in units of the interval's half-width (> 1: the interval excludes 0)."""
        return abs(self.diff) / self.half_width if self.half_width > 0 else math.inf

    @property
    def verdict(self) -> str:
        """``a`` or ``b``: that method has the lower error, with the interval excluding 0; else ``level``."""
        if not math.isfinite(self.half_width):
            return "level"
        if self.diff + self.half_width < 0:
            return "a"
        if self.diff - self.half_width > 0:
            return "b"
        return "level"


@dataclass
class Comparison:
    """Method a against method b on ``metric`` (lower is better) along a grid of equal rewards."""

    a: str
    b: str
    metric: str
    rows: list[AtReward]
    level: float = LEVEL

    def ranges(self) -> list[tuple[str, float, float]]:
        """Contiguous reward ranges with one verdict: (verdict, first reward, last reward)."""
        out: list[tuple[str, float, float]] = []
        for row in self.rows:
            if out and out[-1][0] == row.verdict:
                out[-1] = (row.verdict, out[-1][1], row.reward)
            else:
                out.append((row.verdict, row.reward, row.reward))
        return out

    def summary(self) -> str:
        """One sentence per verdict range, with the largest margin as a multiple of the interval."""
        if not self.rows:
            return f"{self.a} vs {self.b} on {self.metric}: their frontiers share no reward range over common seeds; not compared."
        names = {"a": self.a, "b": self.b}
        parts = []
        for verdict, lo, hi in self.ranges():
            inside = [r for r in self.rows if lo <= r.reward <= hi]
            span = f"reward {lo:.4g}" if lo == hi else f"reward {lo:.4g} to {hi:.4g}"
            if verdict == "level":
                parts.append(f"{span}: level (the {self.level:.0%} interval of the difference contains 0)")
                continue
            best = max(inside, key=lambda r: abs(r.diff))
            parts.append(
                f"{span}: {names[verdict]} ahead, by up to {abs(best.diff):.4g} in {self.metric} "
                f"(±{best.half_width:.4g}, {best.margin:.1f}x the interval's half-width, at reward {best.reward:.4g})"
            )
        seeds = max(r.seeds for r in self.rows)
        return f"{self.a} vs {self.b} on {self.metric} ({self.metric} lower is better, {seeds} paired seeds): " + "; ".join(parts) + "."


def compare_at_equal_reward(
    points: list[Point], a: str, b: str, metric: str, n_grid: int = 25, level: float = LEVEL
) -> Comparison:
    """error_a(R) - error_b(R) on a grid of rewards R, paired by seed.

    For each seed common to every setting of both methods, each method's frontier is interpolated
    at R (:func:`interpolate`); the per-seed differences give a mean and a Student-t interval. The
    grid spans the rewards that both methods' mean frontiers reach; a grid point counts only the
    seeds whose own frontiers reach it, and needs two of them.
    """
    pa, pb = method_points(points, a), method_points(points, b)
    seeds = common_seeds(pa + pb)
    lo = max(min(p.reward.mean() for p in pa), min(p.reward.mean() for p in pb))
    hi = min(max(p.reward.mean() for p in pa), max(p.reward.mean() for p in pb))
    rows: list[AtReward] = []
    if seeds and lo <= hi:
        curves = {s: (seed_curve(pa, metric, s), seed_curve(pb, metric, s)) for s in seeds}
        for r in np.linspace(lo, hi, n_grid) if hi > lo else [lo]:
            diffs = [interpolate(*ca, r) - interpolate(*cb, r) for ca, cb in curves.values()]
            diffs = [d for d in diffs if math.isfinite(d)]
            if len(diffs) >= 2:
                mean, half = mean_interval(diffs, level)
                rows.append(AtReward(float(r), len(diffs), mean, half))
    return Comparison(a, b, metric, rows, level)


def points_table(points: list[Point], metrics: list[str], level: float = LEVEL) -> list[str]:
    """Markdown rows: method, setting, seeds, reward and each metric as mean ± half-width."""
    head = ["method", "setting", "seeds", "reward", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = [p.method, p.setting, str(len(p.seeds)), _pm(*p.reward_interval(level))]
        cells += [_pm(*p.error_interval(m, level)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pm(mean: float, half: float) -> str:
    return f"{mean:.4g}" if not math.isfinite(half) else f"{mean:.4g} ± {half:.2g}"


def plot_frontiers(
    points: list[Point],
    metrics: list[str],
    path,
    title: str = "",
    level: float = LEVEL,
    log_y: bool = False,
    references: dict[str, dict[str, float]] | None = None,
    floors: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
):
    """One panel per metric: each method's points at (mean reward, mean error) with both intervals
    as error bars, joined in order of reward. Lower error at the same reward is better.
    ``references``: single points to mark, e.g. {"teacher": {"reward": 0.1, "fid_real": 5.4}};
    ``floors``: a dashed line per metric (e.g. what exact samples score); ``labels``: axis labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(p.method for p in points))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for m in methods:
            pts = sorted(method_points(points, m), key=lambda p: p.reward.mean())
            rx = [p.reward_interval(level) for p in pts]
            ey = [p.error_interval(metric, level) for p in pts]
            xerr = [0 if not math.isfinite(h) else h for _, h in rx]
            yerr = [0 if not math.isfinite(h) else h for _, h in ey]
            ax.errorbar([x for x, _ in rx], [y for y, _ in ey], xerr=xerr, yerr=yerr, fmt="o-", ms=4, capsize=2,
                        color=colours[m], label=m, lw=1)
            for p, (x, _), (y, _) in zip(pts, rx, ey):
                ax.annotate(p.setting, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        for k, (name, ref) in enumerate((references or {}).items()):
            if metric in ref and math.isfinite(ref[metric]):
                ax.plot([ref["reward"]], [ref[metric]], marker="*", ms=10, ls="none", color="k", alpha=0.8 - 0.3 * k, label=name)
        if floors and metric in floors:
            ax.axhline(floors[metric], color="k", ls="--", lw=0.8)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("mean reward (higher is stronger alignment)")
        ax.set_ylabel(f"{(labels or {}).get(metric, metric)} (lower is better)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title=f"bars: {level:.0%} t-intervals over seeds", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
