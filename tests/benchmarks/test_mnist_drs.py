"""benchmarks/mnist_drs.py: the split-half reference's own noise is removed from an estimator's
error, checked where the exact DRS is known (a Gaussian mixture with its exact denoiser)."""

import math

import pytest
import torch

from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.schedules import make_schedule
from didr.objectives.drs import DRPEstimator, ExactMixtureDRS
from didr.rewards.toy import SigmoidReward
from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def drs_bench():
    return load_benchmark("mnist_drs")


def test_noise_corrected_error_removes_the_references_noise(drs_bench):
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(4000, 8, generator=g)
    a, b = truth + 0.5 * torch.randn(4000, 8, generator=g), truth + 0.5 * torch.randn(4000, 8, generator=g)
    exact = drs_bench.noise_corrected(truth, a, b)
    assert exact["rel_rmse"] < 0.05 and exact["shrinkage"] == pytest.approx(1.0, abs=0.02)
    assert exact["ref_noise"] == pytest.approx(0.5 / math.sqrt(2), rel=0.05)  # the mean of two halves of noise 0.5
    half = drs_bench.noise_corrected(0.5 * truth, a, b)
    assert half["rel_rmse"] == pytest.approx(0.5, abs=0.03) and half["shrinkage"] == pytest.approx(0.5, abs=0.02)


def test_measured_drp_error_matches_its_error_against_the_exact_drs(drs_bench):
    torch.manual_seed(0)
    mixture = GaussianMixture([[-2.0], [2.0]], [0.5, 0.5], [0.5, 0.5])
    schedule = make_schedule("vp-cosine")
    ref, reward, beta = MixtureDenoiser(mixture, schedule), SigmoidReward(4.0), 0.72
    x0 = mixture.sample(256, torch.Generator().manual_seed(1)).float()
    found = drs_bench.measure(ref, reward, beta, x0, None, [0.1], ref_samples=512, ref_steps=200, drp_steps=(1,), mc=(), log=lambda _: None)
    # the same points, against the exact DRS (M9 by quadrature); the reference needs many steps: with 40 its
    # ancestral posterior samples are under-dispersed and its DRS about 10% short here
    t = torch.full((256,), 0.1)
    x_t = schedule.add_noise(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(100)))
    exact, drp = ExactMixtureDRS(mixture, reward, beta)(ref, x_t, t).drs, DRPEstimator(reward, beta, 1)(ref, x_t, t).drs
    true_rel = float((drp - exact).norm() / exact.norm())
    measured = found["estimators"]["DRP k=1"][0]["rel_rmse"]
    assert measured == pytest.approx(true_rel, rel=0.25)
    assert found["reference"][0]["ess"] > 10 and found["trusted_up_to"]["DRP k=1"] in (None, 0.1)
    assert "| DRP k=1 |" in drs_bench.tables({**found, "ref_samples": 512, "ref_steps": 200})
