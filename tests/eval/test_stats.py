"""Bootstrap intervals over prompts, seeds paired."""

import numpy as np
import pytest

from didr.eval.stats import difference_interval, mean_interval, win_rate_interval


def test_the_mean_interval_has_the_width_of_the_normal_theory_one():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.3, 1.0, size=(400, 1))
    interval = mean_interval(scores, boots=3000)
    half = 1.96 / np.sqrt(400)
    assert interval.estimate == pytest.approx(scores.mean())
    assert (interval.high - interval.low) / 2 == pytest.approx(half, rel=0.15)
    assert interval.low < 0.3 < interval.high


def test_seeds_of_one_prompt_move_together():
    """Seeds are not independent draws of the prompt's quality: the interval resamples prompts, so a
    prompt effect shared by its seeds widens it as much as fewer prompts would."""
    rng = np.random.default_rng(1)
    prompt_effect = rng.normal(size=(50, 1))
    scores = prompt_effect + 0.01 * rng.normal(size=(50, 8))
    wide = mean_interval(scores)
    assert (wide.high - wide.low) / 2 > 1.5 / np.sqrt(50)  # not the 1.96 / sqrt(400) of 400 independent images


def test_paired_difference_and_win_rate():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 3))
    assert difference_interval(a, a).estimate == 0 and win_rate_interval(a, a).estimate == 0.5
    better = a + 0.5 + 0.01 * rng.normal(size=a.shape)
    diff, wins = difference_interval(better, a), win_rate_interval(better, a)
    assert diff.excludes(0) and diff.low > 0.4 and wins.estimate == 1.0
    with pytest.raises(ValueError, match="same prompts and seeds"):
        difference_interval(a, a[:10])
    with pytest.raises(ValueError, match="NaN"):
        mean_interval(np.full((3, 2), np.nan))
