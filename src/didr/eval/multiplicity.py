"""Corrections for many looks: which of m p-values may be declared, and at what level their
intervals must then be read (docs/method.md §7).

A comparison at equal reward tests a grid of rewards, for several metrics and method pairs: dozens
to hundreds of looks. Declaring every look whose pointwise 95% interval excludes 0 declares about
5% of them by chance even where nothing differs. These functions take the family's p-values and
return which are declared:

- ``bh`` (Benjamini-Hochberg 1995): the largest k with p_(k) <= k alpha / m; controls the expected
  fraction of false verdicts among the declared ones at alpha (for independent or positively
  dependent tests, as neighbouring points of one frontier are). Where nothing differs every
  verdict is false, so the chance of any verdict at all is at most alpha.
- ``holm`` (Holm 1979): step-down Bonferroni; controls the chance of any false verdict at alpha
  whatever the dependence, and is stricter.
- ``none``: each look at alpha on its own (the pointwise procedure; for comparison only).

:func:`adjusted_level` is the confidence level at which the declared points' intervals exclude 0
(the false-coverage-rate level 1 - R alpha / m of Benjamini and Yekutieli 2005 for ``bh``).
"""

from __future__ import annotations

import numpy as np

CORRECTIONS = ("bh", "holm", "none")
CORRECTION_NAMES = {"bh": "Benjamini-Hochberg", "holm": "Holm", "none": "no correction"}


def declared(p_values, alpha: float = 0.05, correction: str = "bh") -> np.ndarray:
    """A boolean mask: which of ``p_values`` the correction declares at ``alpha`` (NaN: never)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.zeros(len(p), dtype=bool)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return out
    if correction == "none":
        out[finite] = p[finite] <= alpha
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    ranked = p[order]
    if correction == "bh":
        passing = np.flatnonzero(ranked <= alpha * np.arange(1, m + 1) / m)
        if len(passing):
            out[order[: passing[-1] + 1]] = True
        return out
    for i, value in enumerate(ranked):  # holm: step down until the first that fails
        if value > alpha / (m - i):
            break
        out[order[i]] = True
    return out


def adjusted_level(n_declared: int, m: int, alpha: float = 0.05, correction: str = "bh") -> float:
    """The confidence level whose intervals exclude 0 exactly at the declared points: 1 - R alpha / m
    (``bh``, R declared of m), 1 - alpha / m (``holm``, Bonferroni's, which covers Holm's), 1 - alpha (``none``)."""
    if correction == "none" or m == 0:
        return 1 - alpha
    if correction == "holm":
        return 1 - alpha / m
    return 1 - max(n_declared, 1) * alpha / m
