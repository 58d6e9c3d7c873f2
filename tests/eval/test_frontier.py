"""Frontiers and comparisons at equal reward, on hand-made points with known answers, and the
verdict procedure's false-verdict rate on frontiers drawn from one method."""

import math

import numpy as np
import pytest
from scipy import stats

from didr.eval.frontier import POINTWISE, PROCEDURE, Point, Procedure, compare_at_equal_reward, compare_family, interpolate, mean_interval, points_table, shared_range
from didr.eval.frontier_plots import plot_comparisons, plot_frontiers


def test_mean_interval_is_the_student_t_interval():
    mean, half = mean_interval([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * np.std([1, 2, 6], ddof=1) / math.sqrt(3))
    assert math.isnan(mean_interval([4.0])[1])


def test_interpolate_sorts_by_reward_and_never_extrapolates():
    rewards, errors = [3.0, 1.0, 2.0], [30.0, 10.0, 20.0]
    assert interpolate(rewards, errors, 1.5) == pytest.approx(15.0)
    assert interpolate(rewards, errors, 3.0) == pytest.approx(30.0)
    assert math.isnan(interpolate(rewards, errors, 0.99))
    assert math.isnan(interpolate(rewards, errors, 3.01))


def _line(method, offsets, slope=1.0, strengths=(1, 2, 3)):
    """Points on error = slope * reward + offset_s for seed s, rewards = strength + small seed jitter."""
    pts = []
    for k in strengths:
        rewards = np.array([k + 0.01 * s for s in range(len(offsets))])
        pts.append(Point(method, f"k={k}", rewards, {"err": slope * rewards + np.array(offsets)}, list(range(len(offsets)))))
    return pts


def test_a_method_lower_by_a_constant_is_ahead_by_that_constant_everywhere():
    # seed offsets differ, but method b is always 0.5 above a for the same seed: paired differences
    # are exactly -0.5 with no spread
    offsets = [0.0, 0.3, -0.2]
    pts = _line("a", offsets) + _line("b", [o + 0.5 for o in offsets])
    cmp = compare_at_equal_reward(pts, "a", "b", "err", n_grid=11)
    assert len(cmp.rows) == 11
    for row in cmp.rows:
        assert row.diff == pytest.approx(-0.5)
        assert row.verdict == "a"
    assert cmp.ranges()[0][0] == "a" and len(cmp.ranges()) == 1
    assert "a ahead" in cmp.summary()


def test_differences_within_the_seed_spread_are_level():
    pts = _line("a", [0.0, 0.0, 0.0]) + _line("b", [0.4, -0.4, 0.05])  # mean diff -0.0167, large spread
    cmp = compare_at_equal_reward(pts, "a", "b", "err")
    assert cmp.rows and all(r.verdict == "level" for r in cmp.rows)
    assert "level" in cmp.summary()


def test_crossing_frontiers_split_the_reward_range():
    # a: error = reward; b: error = 4 - reward (with per-seed noise): a ahead below 2, b above 2
    noise = [0.0, 0.01, -0.01]
    pa = _line("a", noise)
    pb = []
    for k in (1, 2, 3):
        rewards = np.array([k + 0.01 * s for s in range(3)])
        pb.append(Point("b", f"k={k}", rewards, {"err": 4 - rewards + np.array(noise[::-1])}, [0, 1, 2]))
    cmp = compare_at_equal_reward(pa + pb, "a", "b", "err", n_grid=21)
    verdicts = [v for v, _, _ in cmp.ranges()]
    assert verdicts[0] == "a" and verdicts[-1] == "b"
    low = [r for r in cmp.rows if r.reward < 1.8]
    high = [r for r in cmp.rows if r.reward > 2.2]
    assert all(r.verdict == "a" for r in low) and all(r.verdict == "b" for r in high)


def test_disjoint_reward_ranges_are_not_compared():
    pts = _line("a", [0, 0, 0], strengths=(1, 2)) + _line("b", [0, 0, 0], strengths=(5, 6))
    cmp = compare_at_equal_reward(pts, "a", "b", "err")
    assert cmp.rows == [] and "not compared" in cmp.summary()


def test_only_shared_seeds_are_paired():
    pa = _line("a", [0.0, 0.1, 0.2])
    pb = [Point("b", p.setting, p.reward[:2], {"err": p.errors["err"][:2] + 1}, [0, 1]) for p in pa]
    cmp = compare_at_equal_reward(pa + pb, "a", "b", "err")
    assert cmp.rows and all(r.seeds == 2 for r in cmp.rows)


def test_the_grid_spans_only_what_every_seed_reaches_so_nothing_is_clamped():
    # seed 2's frontier of b stops at reward 2.5: the mean frontiers reach 3, but no grid point
    # past 2.5 may rest on two seeds or on an end value held flat
    pa = _line("a", [0.0, 0.1, 0.2])
    pb = _line("b", [1.0, 1.1, 1.2])
    pb[-1].reward[2] = 2.5
    lo, hi = shared_range([p for p in pa], [p for p in pb], [0, 1, 2])
    assert (lo, hi) == (pytest.approx(1.02), pytest.approx(2.5))
    cmp = compare_at_equal_reward(pa + pb, "a", "b", "err")
    assert cmp.rows[-1].reward == pytest.approx(2.5) and all(r.seeds == 3 for r in cmp.rows)


def test_a_declared_stretch_shorter_than_the_minimum_range_is_level():
    # a ahead by a clear margin at one reward only (a single grid point), level elsewhere
    pts = []
    for k in range(1, 7):
        rewards = np.array([k + 0.001 * s for s in range(3)])
        diff = np.array([-2.01, -1.99, -2.0]) if k == 3 else np.array([3.0, -3.0, 0.0])
        pts.append(Point("a", f"k={k}", rewards, {"err": 1.0 + diff}, [0, 1, 2]))
        pts.append(Point("b", f"k={k}", rewards, {"err": np.ones(3)}, [0, 1, 2]))
    loose = compare_at_equal_reward(pts, "a", "b", "err", n_grid=101, procedure=Procedure(min_range=0.0))
    strict = compare_at_equal_reward(pts, "a", "b", "err", n_grid=101, procedure=Procedure(min_range=0.1))
    assert any(v == "a" for v, _, _ in loose.ranges())
    assert [v for v, _, _ in strict.ranges()] == ["level"]
    assert strict.short_stretches() and "shorter than the minimum range" in strict.summary()


def test_a_family_is_corrected_together():
    # one weak difference (p about 0.02 at each point) on its own passes; beside six null comparisons it does not
    rng = np.random.default_rng(3)
    weak = _line("a", [0.0, 0.0, 0.0]) + _line("b", [0.45, 0.7, 0.52])
    alone = compare_at_equal_reward(weak, "a", "b", "err")
    assert all(0.01 < r.p_value < 0.03 for r in alone.rows) and [v for v, _, _ in alone.ranges()] == ["a"]
    nulls = [Point(f"n{i}", p.setting, p.reward, {"err": p.errors["err"] + rng.normal(0, 0.5, 3)}, p.seeds)
             for i in range(6) for p in _line("x", [0.0, 0.0, 0.0])]
    together = compare_family(weak + nulls, [("a", "b")] + [("a", f"n{i}") for i in range(6)], ["err"])
    assert together[0].decision.looks == 7 * 25
    assert [v for v, _, _ in together[0].ranges()] == ["level"]


def test_a_constant_offset_is_declared_and_its_interval_read_at_the_corrected_level():
    offsets = [0.0, 0.3, -0.2]
    noise = np.array([0.0, 0.02, -0.015])
    pts = _line("a", offsets) + _line("b", list(np.array(offsets) + 0.5 + noise))
    cmp = compare_at_equal_reward(pts, "a", "b", "err")
    assert cmp.decision.declared == len(cmp.rows) and cmp.decision.level == pytest.approx(0.95)  # BH: R = m
    row = cmp.rows[0]
    assert row.half_width_at(0.95) == pytest.approx(row.half_width)
    assert row.p_value == pytest.approx(2 * stats.t.sf(abs(row.diff) / (row.sd / math.sqrt(3)), 2))


def one_method(rng, name: str, stage: np.ndarray, seeds: int = 3) -> list[Point]:
    """A method's frontier over four strengths: rewards with seed noise, two errors along a curve
    with a per-seed stage effect (shared by every method at that seed, as the stages are) and run
    noise, one of them heavy-tailed."""
    pts = []
    for k in (1, 2, 3, 4):
        r = k + rng.normal(0, 0.15, seeds)
        errors = {"smooth": 0.3 * r**2 + stage + rng.normal(0, 0.2, seeds), "heavy": np.exp(-r) + 0.5 * stage + 0.05 * rng.standard_t(3, seeds)}
        pts.append(Point(name, f"s={k}", r, errors, list(range(seeds))))
    return pts


def false_verdict_rate(procedure: Procedure, families: int = 300, seed: int = 0) -> float:
    """The fraction of families (two pairs x two metrics) drawn from one method in which any
    verdict is declared."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(families):
        stage = rng.normal(0, 0.5, 3)
        pts = one_method(rng, "A", stage) + one_method(rng, "B", stage) + one_method(rng, "C", stage)
        comparisons = compare_family(pts, [("A", "B"), ("A", "C")], ["smooth", "heavy"], procedure=procedure)
        hits += any(v != "level" for c in comparisons for v, _, _ in c.ranges())
    return hits / families


def test_frontiers_of_one_method_give_no_verdict_at_the_stated_rate():
    # the stated rate: a family in which no method differs declares anything at most 5% of the
    # time. 300 families: a true rate of 5% exceeds 0.08 with probability under 1%.
    assert false_verdict_rate(PROCEDURE) <= 0.08
    assert false_verdict_rate(Procedure(min_range=0.0)) <= 0.08  # the correction alone holds it too
    assert false_verdict_rate(POINTWISE, families=100) > 0.5  # the pointwise 95% verdicts do not


def test_a_real_difference_is_still_found():
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(40):
        stage = rng.normal(0, 0.5, 3)
        a, b = one_method(rng, "A", stage), one_method(rng, "B", stage)
        for p in b:
            p.errors["smooth"] = p.errors["smooth"] + 2.0  # 7 times the paired noise's spread
        cmp = compare_family(a + b, [("A", "B")], ["smooth", "heavy"])[0]
        found += [v for v, _, _ in cmp.ranges()] == ["a"]
    assert found >= 32


def test_point_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="3 values of 'err' for 2 rewards"):
        Point("a", "x", [1, 2], {"err": [1, 2, 3]})


def test_table_and_plots(tmp_path):
    pts = _line("a", [0.0, 0.1, 0.2]) + _line("b", [0.5, 0.6, 0.7])
    lines = points_table(pts, ["err"])
    assert len(lines) == 2 + len(pts) and "±" in lines[2]
    path = plot_frontiers(pts, ["err"], tmp_path / "frontier.png", title="test")
    assert path.stat().st_size > 1000
    # reference points (a teacher) are marked where they have the metric, skipped where it is NaN
    marked = plot_frontiers(pts, ["err"], tmp_path / "marked.png", references={"teacher": {"reward": 0.5, "err": 1.0}, "none": {"reward": 0.1, "err": math.nan}})
    assert marked.stat().st_size > path.stat().st_size
    # one row per pair at its own scale, and the calibration panel
    cmp = compare_family(pts, [("a", "b")], ["err"])
    both = plot_comparisons(pts, cmp, ["err"], tmp_path / "pairs.png", calibration={"a": [(0.5, [0.6, 0.55, 0.7]), (1.0, [1.1, 0.9, 1.0])]},
                            curves={"err": ([1.0, 3.0], [0.5, 2.5], "floor")})
    assert both.stat().st_size > marked.stat().st_size
