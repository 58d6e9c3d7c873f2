"""Reward-error frontiers over seeds, and comparisons at equal reward (docs/method.md §7).

Each method is swept over its own strength (DIDR's beta, DI++'s alpha, ReFL's regulariser weight)
and every setting is run with several seeds. A :class:`Point` holds one setting's per-seed mean
rewards and errors (distance to the optimum of equal reward, FID, ...). A method's frontier is the
piecewise-linear curve of error against reward through its points, in order of reward.

Comparisons are paired by seed: seed s of every setting shares the preparation stages (reference,
initial generator), so for each seed the two methods' frontiers are interpolated at the same
reward R and differenced; the per-seed differences give a mean, a Student-t interval and a p-value.
The grid spans the rewards that every paired seed's two frontiers reach, so each point uses every
seed and no frontier is extended or clamped past its own ends.

A verdict ("a ahead") is declared under a :class:`Procedure` that survives many looks: the p-values
of every grid point of every comparison in a family (a report) are corrected together
(Benjamini-Hochberg at 5% by default, :mod:`didr.eval.multiplicity`), and a declared stretch counts
only if it spans at least a stated fraction of the compared reward range. Where no method differs,
a family yields any verdict at most 5% of the time (tests/eval/test_frontier.py checks it on
frontiers drawn from one method).

    points = [Point("didr", "beta=0.5", rewards, {"w1": errors}, seeds), ...]
    comparisons = compare_family(points, [("didr", "dipp"), ("didr", "refl")], ["w1"])
    print(comparisons[0].summary())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

from didr.eval.multiplicity import CORRECTION_NAMES, CORRECTIONS, adjusted_level, declared

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


@dataclass(frozen=True)
class Procedure:
    """How verdicts are declared over a family of comparisons: ``correction`` of the family's
    p-values at ``alpha`` (:mod:`didr.eval.multiplicity`), then only stretches of one sign that span
    at least ``min_range`` of their comparison's reward range."""

    alpha: float = 0.05
    correction: str = "bh"
    min_range: float = 0.1

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {self.correction!r}; choose one of {', '.join(CORRECTIONS)}")
        if not 0 < self.alpha < 1 or not 0 <= self.min_range <= 1:
            raise ValueError(f"alpha must be in (0, 1) and min_range in [0, 1], got {self.alpha}, {self.min_range}")

    def text(self) -> str:
        return (f"{CORRECTION_NAMES[self.correction]} at {self.alpha:.0%} over every grid point of every comparison in the family, "
                f"and a verdict must hold over at least {self.min_range:.0%} of the compared reward range")


PROCEDURE = Procedure()
#: each grid point tested on its own at 95%, as before any correction: for comparison only
POINTWISE = Procedure(correction="none", min_range=0.0)


@dataclass
class AtReward:
    """The difference error_a - error_b at one reward, over the seeds whose frontiers both reach it."""

    reward: float
    seeds: int
    diff: float
    half_width: float  # of the pointwise interval at the comparison's level
    sd: float = math.nan  # of the per-seed differences
    p_value: float = math.nan  # two-sided paired t-test of a zero mean difference
    declared: bool = False  # by the family's correction
    verdict: str = "level"  # "a" / "b": declared, and inside a stretch long enough; else "level"

    @property
    def margin(self) -> float:
        """|difference| in units of the pointwise interval's half-width (> 1: it excludes 0)."""
        return abs(self.diff) / self.half_width if self.half_width > 0 else math.inf

    @property
    def lower(self) -> str:
        """The method with the lower error here: ``a`` or ``b``."""
        return "a" if self.diff < 0 else "b"

    def half_width_at(self, level: float) -> float:
        if self.seeds < 2 or not math.isfinite(self.sd):
            return math.nan
        return float(stats.t.ppf(0.5 + level / 2, self.seeds - 1) * self.sd / math.sqrt(self.seeds))


def paired_test(diffs, level: float = LEVEL) -> AtReward:
    """Mean, pointwise half-width, spread and two-sided t-test p-value of per-seed differences
    (``reward`` left at NaN). Differences that agree exactly give p = 0 unless their mean is 0."""
    d = np.asarray(diffs, dtype=np.float64)
    mean, half = mean_interval(d, level)
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    if len(d) < 2:
        p = math.nan
    elif sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(d))), len(d) - 1))
    return AtReward(math.nan, len(d), mean, half, sd, p)


@dataclass
class Decision:
    """What the family's correction did: looks tested, points declared, and the level at which
    the declared points' intervals exclude 0."""

    procedure: Procedure
    looks: int
    comparisons: int
    declared: int
    level: float

    def text(self) -> str:
        return (f"Verdicts: {self.procedure.text()} ({self.looks} points in {self.comparisons} comparisons; {self.declared} declared, "
                f"so a declared point's interval is read at {100 * self.level:.3g}%).")


@dataclass
class Comparison:
    """Method a against method b on ``metric`` (lower is better) along a grid of equal rewards."""

    a: str
    b: str
    metric: str
    rows: list[AtReward]
    level: float = LEVEL
    decision: Decision | None = None

    @property
    def span(self) -> float:
        return self.rows[-1].reward - self.rows[0].reward if self.rows else 0.0

    def ranges(self) -> list[tuple[str, float, float]]:
        """Contiguous reward ranges with one verdict: (verdict, first reward, last reward)."""
        out: list[tuple[str, float, float]] = []
        for row in self.rows:
            if out and out[-1][0] == row.verdict:
                out[-1] = (row.verdict, out[-1][1], row.reward)
            else:
                out.append((row.verdict, row.reward, row.reward))
        return out

    def short_stretches(self) -> list[tuple[str, float, float]]:
        """Declared stretches that the minimum range turned back to level: (lower method, first, last)."""
        return [(v, lo, hi) for v, lo, hi, i, j in _stretches(self.rows) if all(self.rows[k].verdict == "level" for k in range(i, j + 1))]

    def read_level(self) -> float:
        return self.decision.level if self.decision else self.level

    def summary(self) -> str:
        """One sentence per verdict range, with the largest difference and its interval at the
        level the correction reads declared points at."""
        if not self.rows:
            return f"{self.a} vs {self.b} on {self.metric}: their frontiers share no reward range over common seeds; not compared."
        names = {"a": self.a, "b": self.b}
        level = self.read_level()
        parts = []
        for verdict, lo, hi in self.ranges():
            inside = [r for r in self.rows if lo <= r.reward <= hi]
            span = f"reward {lo:.4g}" if lo == hi else f"reward {lo:.4g} to {hi:.4g}"
            if verdict == "level":
                parts.append(f"{span}: level")
                continue
            best = max(inside, key=lambda r: abs(r.diff))
            parts.append(f"{span}: {names[verdict]} ahead, by up to {abs(best.diff):.4g} in {self.metric} "
                         f"(±{best.half_width_at(level):.2g} at {100 * level:.3g}%, at reward {best.reward:.4g})")
        short = self.short_stretches()
        if short:
            parts.append("declared but shorter than the minimum range, so level: "
                         + ", ".join(f"{names[v]} lower at {lo:.4g}" + ("" if lo == hi else f" to {hi:.4g}") for v, lo, hi in short))
        seeds = min(r.seeds for r in self.rows)
        return f"{self.a} vs {self.b} on {self.metric} ({self.metric} lower is better, {seeds} paired seeds): " + "; ".join(parts) + "."


def _stretches(rows: list[AtReward]) -> list[tuple[str, float, float, int, int]]:
    """Maximal runs of consecutive declared rows with the same lower method: (method, first reward,
    last reward, first index, last index)."""
    out: list[tuple[str, float, float, int, int]] = []
    for i, row in enumerate(rows):
        if not row.declared:
            continue
        if out and out[-1][4] == i - 1 and out[-1][0] == row.lower:
            v, lo, _, first, _ = out[-1]
            out[-1] = (v, lo, row.reward, first, i)
        else:
            out.append((row.lower, row.reward, row.reward, i, i))
    return out


def decide(comparisons: list[Comparison], procedure: Procedure = PROCEDURE) -> list[Comparison]:
    """Declare verdicts over the family ``comparisons`` together: the correction over all their
    grid points' p-values, then the minimum range within each comparison. Returns new comparisons."""
    rows = [r for c in comparisons for r in c.rows]
    mask = declared([r.p_value for r in rows], procedure.alpha, procedure.correction)
    looks = int(sum(math.isfinite(r.p_value) for r in rows))
    decision = Decision(procedure, looks, sum(bool(c.rows) for c in comparisons), int(mask.sum()),
                        adjusted_level(int(mask.sum()), looks, procedure.alpha, procedure.correction))
    out, k = [], 0
    for c in comparisons:
        new_rows = [replace(r, declared=bool(mask[k + i]), verdict="level") for i, r in enumerate(c.rows)]
        k += len(c.rows)
        width = new_rows[-1].reward - new_rows[0].reward if new_rows else 0.0
        for verdict, lo, hi, first, last in _stretches(new_rows):
            if width > 0 and hi - lo >= procedure.min_range * width - 1e-12 * width:
                for i in range(first, last + 1):
                    new_rows[i].verdict = verdict
        out.append(replace(c, rows=new_rows, decision=decision))
    return out


def shared_range(pa: list[Point], pb: list[Point], seeds: list[int]) -> tuple[float, float]:
    """The rewards that every seed's frontiers of both methods reach: (lo, hi), lo > hi if none."""
    lo, hi = -math.inf, math.inf
    for s in seeds:
        for pts in (pa, pb):
            r = [p.value("reward", s) for p in pts]
            lo, hi = max(lo, min(r)), min(hi, max(r))
    return lo, hi


def grid_rows(points: list[Point], a: str, b: str, metric: str, n_grid: int = 25, level: float = LEVEL) -> list[AtReward]:
    """error_a(R) - error_b(R) on a grid of rewards R across :func:`shared_range`, paired by seed:
    each seed's two frontiers interpolated at R (:func:`interpolate`) and differenced."""
    pa, pb = method_points(points, a), method_points(points, b)
    seeds = common_seeds(pa + pb)
    if len(seeds) < 2:
        return []
    lo, hi = shared_range(pa, pb, seeds)
    if not lo <= hi:
        return []
    curves = [(seed_curve(pa, metric, s), seed_curve(pb, metric, s)) for s in seeds]
    rows = []
    for r in np.linspace(lo, hi, n_grid) if hi > lo else [lo]:
        diffs = [d for d in (interpolate(*ca, r) - interpolate(*cb, r) for ca, cb in curves) if math.isfinite(d)]
        if len(diffs) >= 2:  # a metric can be undefined at some rewards (FID p* below the data's reward)
            rows.append(replace(paired_test(diffs, level), reward=float(r)))
    return rows


def compare_at_equal_reward(points: list[Point], a: str, b: str, metric: str, n_grid: int = 25, level: float = LEVEL,
                            procedure: Procedure = PROCEDURE) -> Comparison:
    """One comparison, decided as a family of its own (:func:`compare_family` decides several together)."""
    return decide([Comparison(a, b, metric, grid_rows(points, a, b, metric, n_grid, level), level)], procedure)[0]


def compare_family(points: list[Point], pairs: list[tuple[str, str]], metrics: list[str], n_grid: int = 25, level: float = LEVEL,
                   procedure: Procedure = PROCEDURE) -> list[Comparison]:
    """Every pair on every metric, with verdicts declared over all of them together (:func:`decide`)."""
    found = {p.method for p in points}
    raw = [Comparison(a, b, m, grid_rows(points, a, b, m, n_grid, level), level) for a, b in pairs if a in found and b in found for m in metrics]
    return decide(raw, procedure)


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
