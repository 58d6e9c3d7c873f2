"""Corrections for many looks, on p-values worked by hand."""

import math

import numpy as np
import pytest

from didr.eval.multiplicity import adjusted_level, declared

P = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, math.nan]


def test_benjamini_hochberg_declares_up_to_the_largest_rank_under_its_line():
    # m = 8 finite: thresholds k * 0.05 / 8 = 0.00625, 0.0125, 0.01875, 0.025, ...: p_(2) = 0.008 <= 0.0125, p_(3) = 0.039 > 0.01875
    assert declared(P, 0.05, "bh").tolist() == [True, True] + [False] * 7
    # a later rank under its line carries every smaller p with it: p_(7) = 0.074 <= 7 * 0.1 / 8 = 0.0875
    # declares p_(3) = 0.039 too, although 0.039 > 3 * 0.1 / 8
    assert declared(P, 0.1, "bh").tolist() == [True] * 7 + [False] * 2


def test_holm_steps_down_until_the_first_failure():
    # 0.001 <= 0.05 / 8; 0.008 > 0.05 / 7 = 0.00714: stop
    assert declared(P, 0.05, "holm").tolist() == [True] + [False] * 8
    assert declared(P, 0.05, "none").tolist() == [True, True, True, True, True, False, False, False, False]


def test_order_does_not_matter_and_nan_is_never_declared():
    rng = np.random.default_rng(0)
    order = rng.permutation(len(P))
    for correction in ("bh", "holm", "none"):
        assert declared(np.array(P)[order], 0.05, correction).tolist() == np.array(declared(P, 0.05, correction))[order].tolist()
    assert not declared([math.nan, math.nan]).any()
    with pytest.raises(ValueError, match="unknown correction"):
        declared(P, 0.05, "bonferoni")


def test_adjusted_levels():
    assert adjusted_level(2, 8, 0.05, "bh") == pytest.approx(1 - 2 * 0.05 / 8)
    assert adjusted_level(0, 8, 0.05, "bh") == pytest.approx(1 - 0.05 / 8)
    assert adjusted_level(3, 8, 0.05, "holm") == pytest.approx(1 - 0.05 / 8)
    assert adjusted_level(3, 8, 0.05, "none") == pytest.approx(0.95)
