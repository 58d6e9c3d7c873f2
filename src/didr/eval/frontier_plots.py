"""Frontier figures: every method at once, each comparison at its own scale, and calibration.

:func:`plot_frontiers` draws one panel per metric with every method (a method far from the rest,
such as ReFL, sets the scale there). :func:`plot_comparisons` adds one row per compared pair,
each panel holding only those two methods at their own scale, shaded where a verdict was declared,
and a panel of the temperature each run was given against the one its mean reward implies
(:func:`plot_calibration`).
"""

from __future__ import annotations

import math
import textwrap

from didr.eval.frontier import LEVEL, Comparison, Point, method_points

#: label offsets (points) for the first and second method of a pair, so their labels do not collide
OFFSETS = ((-4, 6), (4, -11))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(setting: str) -> str:
    """'beta=0.36' -> '0.36', 'refl_reg=0.1' -> '0.1', 'b=0.5' -> '0.5': the axis says which strength."""
    return setting.split("=", 1)[-1]


def draw_method(ax, points: list[Point], method: str, metric: str, colour, level: float = LEVEL, offset=None) -> None:
    """One method's points at (mean reward, mean error) with both intervals as error bars, joined in
    order of reward; its settings written beside them at ``offset`` (None: unlabelled)."""
    pts = sorted(method_points(points, method), key=lambda p: p.reward.mean())
    rx = [p.reward_interval(level) for p in pts]
    ey = [p.error_interval(metric, level) for p in pts]
    keep = [i for i, (y, _) in enumerate(ey) if math.isfinite(y)]
    if not keep:
        return
    fin = lambda h: h if math.isfinite(h) else 0.0  # noqa: E731
    ax.errorbar([rx[i][0] for i in keep], [ey[i][0] for i in keep], xerr=[fin(rx[i][1]) for i in keep], yerr=[fin(ey[i][1]) for i in keep],
                fmt="o-", ms=4, capsize=2, color=colour, label=method, lw=1)
    if offset is not None:
        for i in keep:
            ax.annotate(_short(pts[i].setting), (rx[i][0], ey[i][0]), fontsize=6, color=colour, xytext=offset, textcoords="offset points",
                        ha="right" if offset[0] < 0 else "left")


def _references(ax, metric: str, references: dict | None) -> None:
    for k, (name, ref) in enumerate((references or {}).items()):
        if metric in ref and math.isfinite(ref[metric]):
            ax.plot([ref["reward"]], [ref[metric]], marker="*", ms=10, ls="none", color="k", alpha=0.8 - 0.3 * k, label=name)


def _curve(ax, metric: str, curves: dict | None, clip: bool = False) -> None:
    """The metric's dotted reference curve; ``clip``: only over the rewards already plotted, so it
    does not widen a pair's scale."""
    if not curves or metric not in curves:
        return
    x, y, label = curves[metric]
    if clip:
        lo, hi = ax.get_xlim()
        kept = [(a, b) for a, b in zip(x, y) if lo <= a <= hi and math.isfinite(b)]
        x, y = [a for a, _ in kept], [b for _, b in kept]
    ax.plot(x, y, ":", color="k", lw=1.2, label=label)


def _label_axes(ax, metric: str, labels: dict | None) -> None:
    ax.set_xlabel("mean reward", fontsize=8)
    ax.set_ylabel(f"{(labels or {}).get(metric, metric)}\n(lower is better)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _shade(ax, comparison: Comparison, colours: dict) -> None:
    """Shade the reward ranges where a verdict was declared, in the colour of the method ahead."""
    step = comparison.span / max(len(comparison.rows) - 1, 1) / 2
    names = {"a": comparison.a, "b": comparison.b}
    for verdict, lo, hi in comparison.ranges():
        if verdict != "level":
            ax.axvspan(lo - step, hi + step, color=colours[names[verdict]], alpha=0.12, lw=0)


def plot_calibration(ax, calibration: dict[str, list[tuple[float, list[float]]]], colours: dict, level: float = LEVEL) -> None:
    """Given beta against the beta' each run's mean reward implies, log-log, one dot per seed and the
    mean over seeds; on the diagonal a run lands on the optimum of its own beta."""
    lo, hi = math.inf, 0.0
    for i, (method, settings) in enumerate(calibration.items()):
        colour = colours.get(method, f"C{i}")
        for beta, primes in settings:
            finite = [b for b in primes if math.isfinite(b) and b > 0]
            if not math.isfinite(beta) or not finite:
                continue
            ax.plot([beta] * len(finite), finite, ".", color=colour, alpha=0.5, ms=5)
            mean = math.exp(sum(math.log(b) for b in finite) / len(finite))
            ax.plot([beta], [mean], "_", color=colour, ms=14, mew=2, label=method if beta == settings[0][0] else None)
            lo, hi = min(lo, beta, *finite), max(hi, beta, *finite)
    if hi > 0:
        ax.plot([lo / 1.5, hi * 1.5], [lo / 1.5, hi * 1.5], "k--", lw=0.8, label="beta' = beta")
        ax.set_xscale("log")
        ax.set_yscale("log")
        given = sorted({b for settings in calibration.values() for b, _ in settings if math.isfinite(b)})
        from matplotlib import ticker
        ax.xaxis.set_major_locator(ticker.FixedLocator(given))  # the given betas as ticks
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers, no crowded minor labels
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("beta given", fontsize=8)
    ax.set_ylabel("beta' implied by the mean reward\n(dots: seeds; bar: geometric mean)", fontsize=7)
    ax.set_title("calibration", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=5, loc="upper left")


def plot_frontiers(points: list[Point], metrics: list[str], path, title: str = "", level: float = LEVEL, log_y: bool = False,
                   references: dict[str, dict[str, float]] | None = None, floors: dict[str, float] | None = None,
                   labels: dict[str, str] | None = None):
    """One panel per metric with every method: each method's points with both intervals as error
    bars, joined in order of reward. ``references``: single points to mark, e.g. {"teacher":
    {"reward": 0.1, "fid_real": 5.4}}; ``floors``: a dashed line per metric; ``labels``: axis labels."""
    return plot_comparisons(points, [], metrics, path, title, level, log_y, references, floors, labels)


def plot_comparisons(points: list[Point], comparisons: list[Comparison], metrics: list[str], path, title: str = "", level: float = LEVEL,
                     log_y: bool = False, references: dict[str, dict[str, float]] | None = None, floors: dict[str, float] | None = None,
                     labels: dict[str, str] | None = None, calibration: dict[str, list[tuple[float, list[float]]]] | None = None,
                     curves: dict[str, tuple[list[float], list[float], str]] | None = None):
    """A first row with every method on each metric (and the calibration panel, if given), then one
    row per compared pair: the two methods alone at their own scale, labelled, with the ranges where
    a verdict was declared shaded in the colour of the method ahead. ``curves``: per metric, a
    dotted line (rewards, values, label) in each of its panels, e.g. the optimum's own error."""
    plt = _pyplot()
    methods = list(dict.fromkeys(p.method for p in points))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    pairs = list(dict.fromkeys((c.a, c.b) for c in comparisons))
    cols = len(metrics) + (1 if calibration else 0)
    fig, axes = plt.subplots(1 + len(pairs), cols, figsize=(4.3 * cols, 3.3 * (1 + len(pairs))), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for m in methods:
            draw_method(ax, points, m, metric, colours[m], level)
        _references(ax, metric, references)
        _curve(ax, metric, curves)
        if floors and metric in floors:
            ax.axhline(floors[metric], color="k", ls="--", lw=0.8)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"every method{' (log scale)' if log_y else ''}", fontsize=8)
        _label_axes(ax, metric, labels)
    axes[0][0].legend(fontsize=6, title=f"bars: {level:.0%} t-intervals over seeds", title_fontsize=6)
    if calibration:
        plot_calibration(axes[0][-1], calibration, colours, level)
    found = {(c.a, c.b, c.metric): c for c in comparisons}
    for row, (a, b) in enumerate(pairs, start=1):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for method, offset in zip((a, b), OFFSETS):
                draw_method(ax, points, method, metric, colours[method], level, offset)
            _curve(ax, metric, curves, clip=True)
            if (a, b, metric) in found:
                _shade(ax, found[a, b, metric], colours)
            ax.set_title(textwrap.fill(f"{a} vs {b} (shaded: declared ahead)", 60), fontsize=7)
            _label_axes(ax, metric, labels)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        for col in range(len(metrics), cols):
            axes[row][col].axis("off")
    height = 3.3 * (1 + len(pairs))
    if title:
        fig.suptitle(textwrap.fill(title, 40 * cols), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
