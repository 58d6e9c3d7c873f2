"""The few-step toy's scoring: W1 to q0 is near zero for q0's own samples, and collapse is flagged."""

from types import SimpleNamespace

import torch

from didr.diffusion.mixture import GaussianMixture
from didr.experiments.toy.fewstep import score_two_step

MIXTURE = GaussianMixture([-2.0, 2.0], [0.5, 0.5], [0.5, 0.5])


class Sampler(torch.nn.Module):
    """A 'generator' that ignores its noise and returns samples of a mixture."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, z):
        torch.manual_seed(0)
        return self.mixture.sample(len(z)).float().reshape(len(z), 1)


def test_samples_of_q0_score_near_zero_and_one_mode_is_a_collapse():
    stages = SimpleNamespace(mixture=MIXTURE)
    exact = score_two_step(stages, Sampler(MIXTURE), seed=0)
    one_mode = score_two_step(stages, Sampler(GaussianMixture([2.0], [0.5], [1.0])), seed=0)
    assert exact["w1"] < 0.05 and abs(exact["frac"] - 0.5) < 0.02 and exact["collapsed"] == 0.0
    assert one_mode["w1"] > 1.5 and one_mode["collapsed"] == 1.0
