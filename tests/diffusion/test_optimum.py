"""The exact optimum three ways (M14 closed form, quadrature, importance sampling) against each
other, and the inversion of beta from a mean reward on a case with a known answer."""

import math

import pytest
import torch

from didr.diffusion.mixture import GaussianMixture, TiltedDensity
from didr.diffusion.optimum import GridOptimum, LinearOptimum, SampledOptimum, exact_optimum
from didr.rewards.toy import LinearReward, SigmoidReward

MIX_1D = GaussianMixture([-2.0, 1.0, 2.5], [0.5, 0.3, 0.8], [0.3, 0.2, 0.5])
MIX_2D = GaussianMixture([[-2.0, 0.0], [1.0, 1.5], [2.0, -1.0]], [0.4, 0.3, 0.6], [0.3, 0.3, 0.4])


def ring_8d(std=0.3):
    """A ring of 6 modes in the first two coordinates of 8-D space."""
    ring = GaussianMixture.ring(6, 2.0, std)
    return GaussianMixture(torch.cat([ring.means, torch.zeros(6, 6, dtype=torch.float64)], 1), ring.stds, ring.weights)


@pytest.mark.parametrize("mix, w", [(MIX_1D, [1.3]), (MIX_2D, [0.8, -0.6])], ids=["1d", "2d"])
@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_closed_form_matches_quadrature(mix, w, beta):
    reward = LinearReward(direction=w)
    closed, grid = LinearOptimum(mix, reward), GridOptimum(mix, reward)
    assert closed.mean_reward(beta) == pytest.approx(grid.mean_reward(beta), abs=1e-4)
    torch.testing.assert_close(closed.mode_weights(beta), grid.mode_weights(beta), atol=1e-4, rtol=0)
    g = torch.Generator().manual_seed(0)
    mean_closed = closed.sample(200_000, beta, g).mean(0)
    mean_grid = (grid.at(beta).density[:, None] * grid.grid.points).sum(0) * grid.grid.cell
    torch.testing.assert_close(mean_closed, mean_grid, atol=0.01, rtol=0)


def test_closed_form_matches_importance_sampling_in_8d():
    """A reward direction with off-plane components: the modes barely move off the plane, the
    weights change; importance sampling agrees within a few of its standard errors."""
    mix = ring_8d()
    reward = LinearReward(direction=[1.0, 0.5, 0.3, -0.3, 0.2, 0.0, 0.1, 0.4])
    closed, sampled = LinearOptimum(mix, reward), SampledOptimum(mix, reward, pool=200_000, seed=1)
    for beta in (0.5, 1.0, 3.0):
        ess = sampled.ess(beta)
        assert 1_000 < ess < 200_000
        tol = 5 * math.sqrt(0.25 / ess)  # binomial standard error of a weight, five times over
        torch.testing.assert_close(sampled.mode_weights(beta), closed.mode_weights(beta), atol=tol, rtol=0)
        r_std = float((closed.sample(50_000, beta, torch.Generator().manual_seed(2)) @ reward.direction(8)).std())
        assert sampled.mean_reward(beta) == pytest.approx(closed.mean_reward(beta), abs=5 * r_std / math.sqrt(ess))


def test_quadrature_matches_importance_sampling_for_a_sigmoid_reward():
    reward = SigmoidReward(3.0, direction=[1.0, 1.0])
    grid, sampled = GridOptimum(MIX_2D, reward), SampledOptimum(MIX_2D, reward, pool=200_000, seed=3)
    for beta in (0.2, 1.0):
        ess = sampled.ess(beta)
        assert sampled.mean_reward(beta) == pytest.approx(grid.mean_reward(beta), abs=5 * 0.5 / math.sqrt(ess))
        torch.testing.assert_close(sampled.mode_weights(beta), grid.mode_weights(beta), atol=5 * 0.5 / math.sqrt(ess), rtol=0)


def test_the_grid_at_another_beta_is_the_grid_built_there():
    reward = SigmoidReward(4.0)
    base = TiltedDensity(MIX_1D, reward, 1.0)
    fresh = TiltedDensity(MIX_1D, reward, 0.4)
    torch.testing.assert_close(base.at(0.4).density, fresh.density)
    assert base.beta == 1.0 and base.at(0.4).beta == 0.4  # the original is untouched


@pytest.mark.parametrize("kind", ["closed", "grid", "sampled"])
def test_beta_inversion_on_a_gaussian(kind):
    """r = w . x on N(mu, sigma^2 I): p*_beta = N(mu + sigma^2 w / beta, sigma^2 I), so
    E[r] = w . mu + sigma^2 |w|^2 / beta and beta' = sigma^2 |w|^2 / (R - w . mu)."""
    mu, sigma, w = [0.5, -1.0], 0.7, [1.5, 0.5]
    mix = GaussianMixture([mu], [sigma], [1.0])
    reward = LinearReward(direction=w)
    optimum = {"closed": LinearOptimum, "grid": GridOptimum, "sampled": lambda m, r: SampledOptimum(m, r, pool=400_000)}[kind](mix, reward)
    w_mu, w2 = 1.5 * 0.5 - 0.5, 1.5**2 + 0.5**2
    for beta in (0.3, 1.0, 5.0):
        target = w_mu + sigma**2 * w2 / beta
        # the importance-sampling pool's own mean reward is off by its sampling error
        tol = {"closed": 1e-6, "grid": 1e-5, "sampled": 0.05}[kind]
        assert optimum.fit_beta(target) == pytest.approx(sigma**2 * w2 / (target - w_mu), rel=tol)
    assert math.isinf(optimum.fit_beta(optimum.mean_reward(math.inf) - 0.1))  # at or below q0: beta' = inf


def test_exact_optimum_picks_the_exact_method():
    assert isinstance(exact_optimum(ring_8d(), LinearReward(direction=[1] * 8)), LinearOptimum)
    assert isinstance(exact_optimum(MIX_2D, SigmoidReward(2.0)), GridOptimum)
    assert isinstance(exact_optimum(ring_8d(), SigmoidReward(2.0), pool=1000), SampledOptimum)
