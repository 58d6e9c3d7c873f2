"""Toy metrics against known answers: exact samples sit at the floor, a shift costs its size in W1,
moving off the modes shows in the off-data figure and moving mass between them in the mode TV."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi

from didr.diffusion.mixture import GaussianMixture
from didr.diffusion.optimum import exact_optimum
from didr.eval.toy_metrics import error_at_equal_reward, mode_fractions, nearest_mode, off_data_median, sliced_w1, toy_metrics
from didr.rewards.toy import LinearReward, SigmoidReward

G = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
DEFAULT = GaussianMixture([-2, 2], [0.5, 0.5], [0.5, 0.5])


def test_w1_of_a_shift_is_the_shift_and_sliced_w1_averages_projections():
    x = torch.randn(20000, 1, generator=G(0))
    assert sliced_w1(x + 0.5, x) == pytest.approx(0.5, abs=1e-9)
    y = torch.randn(4000, 2, generator=G(1))
    # a shift v projects to |v| |cos theta|, whose mean over directions in 2-D is 2 |v| / pi
    assert sliced_w1(y + torch.tensor([0.6, 0.8]), y, n_proj=2000) == pytest.approx(2 / math.pi, rel=0.02)
    assert sliced_w1(y, torch.randn(50000, 2, generator=G(2))) < 0.02


@pytest.mark.parametrize("d", [2, 8])
def test_exact_samples_sit_at_a_chi_median_from_their_mode(d):
    """|x - mu| / sigma of an isotropic Gaussian is chi-distributed with d degrees of freedom."""
    ring = GaussianMixture.ring(8, 3.0, 0.05)
    means = torch.cat([ring.means, torch.zeros(8, d - 2, dtype=torch.float64)], 1)
    mix = GaussianMixture(means, ring.stds, ring.weights)
    x = mix.sample(40000, G(3))
    assert off_data_median(x, mix) == pytest.approx(chi.median(d), rel=0.02)
    idx, dist = nearest_mode(x + torch.tensor([0.5] + [0.0] * (d - 1), dtype=torch.float64), mix)
    assert np.median(dist) > 5  # half a unit off the modes is ten of their stds
    assert mode_fractions(x, mix) == pytest.approx(np.full(8, 1 / 8), abs=0.01)


def test_error_at_equal_reward_of_exact_samples_is_the_floor():
    reward = SigmoidReward(4.0)
    optimum = exact_optimum(DEFAULT, reward)
    x = optimum.sample(10000, 0.72, G(4))
    m = toy_metrics(x, optimum, reward, 0.72)
    assert m["beta_equal"] == pytest.approx(0.72, rel=0.1)
    assert m["w1_equal"] < 0.04 and m["mode_tv_equal"] < 0.02 and abs(m["off_data_equal"]) < 0.05
    assert m["mean_reward"] == pytest.approx(optimum.mean_reward(0.72), abs=0.01)
    assert m["frac_positive"] == pytest.approx(float(optimum.mode_weights(0.72)[1]), abs=0.01)


def test_the_split_metrics_tell_moving_mass_from_leaving_the_data():
    """Thin ring, linear reward. Moving mass to the rewarded mode keeps samples on the data; shifting
    every sample along w leaves it. Exact samples of the optimum at equal reward score neither."""
    ring = GaussianMixture.ring(8, 3.0, 0.05)
    reward = LinearReward(1.0)
    optimum = exact_optimum(ring, reward)
    q0 = ring.sample(8000, G(5))
    on_data = torch.cat([q0[:4000], ring.means[0] + 0.05 * torch.randn(4000, 2, generator=G(6), dtype=torch.float64)])
    off = q0 + torch.tensor([1.0, 0.0], dtype=torch.float64)
    e_on = error_at_equal_reward(on_data, optimum, reward)
    e_off = error_at_equal_reward(off, optimum, reward)
    assert e_on["off_data_equal"] < 0.2 and e_off["off_data_equal"] > 10
    exact = optimum.sample(8000, e_on["beta_equal"], G(8))
    e_exact = error_at_equal_reward(exact, optimum, reward)
    assert e_exact["mode_tv_equal"] < 0.03 < e_on["mode_tv_equal"]  # the optimum spreads its mass over several modes
    assert abs(e_exact["off_data_equal"]) < 0.05


def test_samples_below_q0s_reward_are_measured_against_q0():
    reward = SigmoidReward(4.0)
    optimum = exact_optimum(DEFAULT, reward)
    left = DEFAULT.sample(5000, G(7)) - 0.5
    e = error_at_equal_reward(left, optimum, reward)
    assert math.isinf(e["beta_equal"]) and e["w1_equal"] == pytest.approx(0.5, abs=0.05)
