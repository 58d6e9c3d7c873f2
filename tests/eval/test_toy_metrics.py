"""Toy metrics against known answers: exact samples sit at the floor, a shift costs its size in W1."""

import numpy as np
import pytest
import torch

from didr.diffusion.mixture import GaussianMixture, TiltedDensity
from didr.eval.toy_metrics import exact_metrics, toy_metrics
from didr.rewards.toy import LinearReward, SigmoidReward


@pytest.fixture(scope="module")
def tilted():
    return TiltedDensity(GaussianMixture([-2, 2], [0.5, 0.5], [0.5, 0.5]), SigmoidReward(4.0), 0.72)


def test_exact_optimum_mode_weights(tilted):
    # p* reweights each mode by exp(r / beta): r ~ 0 on the left mode, ~1 on the right one
    exact = exact_metrics(tilted)
    e = np.exp(1 / 0.72)
    assert exact["frac_positive"] == pytest.approx(e / (1 + e), abs=0.01)


def test_samples_of_pstar_are_at_the_floor(tilted):
    x = tilted.sample(20000, torch.Generator().manual_seed(0)).float()
    m = toy_metrics(x, tilted, SigmoidReward(4.0))
    assert m["w1_to_pstar"] < 0.03 and m["kl_to_pstar"] < 0.03
    assert m["frac_positive"] == pytest.approx(exact_metrics(tilted)["frac_positive"], abs=0.01)


def test_w1_of_a_shift_is_the_shift(tilted):
    x = tilted.sample(20000, torch.Generator().manual_seed(1)).float()
    m = toy_metrics(x + 0.5, tilted, SigmoidReward(4.0))
    assert m["w1_to_pstar"] == pytest.approx(0.5, abs=0.03)
    assert m["kl_to_pstar"] > 0.3


def test_linear_tilt_of_a_gaussian_shifts_its_mean():
    # N(0, 1) tilted by exp(c x / beta) is N(c / beta, 1)
    td = TiltedDensity(GaussianMixture([0.0], [1.0], [1.0]), LinearReward(0.5), beta=1.0)
    mean = float((td.density * td.points[:, 0]).sum() * td.cell)
    assert mean == pytest.approx(0.5, abs=1e-3)


def test_2d_ring_metrics_are_finite():
    mix = GaussianMixture.ring(6, 3.0, 0.3)
    td = TiltedDensity(mix, SigmoidReward(4.0), 1.0, points_per_dim=161)
    x = td.sample(4000, torch.Generator().manual_seed(0)).float()
    m = toy_metrics(x, td, SigmoidReward(4.0))
    assert m["w1_to_pstar"] < 0.1 and np.isfinite(m["kl_to_pstar"])
