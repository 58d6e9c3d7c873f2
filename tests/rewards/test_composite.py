"""Composite rewards: weighted sums, running normalisation, and which DRS estimators accept them."""

from __future__ import annotations

import pytest
import torch

from didr.errors import ConfigError, RewardError
from didr.objectives.drs import DRPEstimator, MonteCarloDRS
from didr.rewards import CompositeReward, LinearReward, StepReward, call_reward, composite_from_config


def test_weighted_sum_and_differentiability():
    x = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], requires_grad=True)
    reward = CompositeReward([LinearReward(1.0), LinearReward(3.0, axis=1), StepReward()], [2.0, 1.0, 0.5])
    assert torch.allclose(reward(x), torch.tensor([2.5, -4.0]))
    assert not reward.differentiable and reward.typical_range is None
    smooth = CompositeReward([LinearReward(1.0), LinearReward(3.0, axis=1)], [2.0, -1.0])
    assert smooth.differentiable
    smooth(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[2.0, -3.0], [2.0, -3.0]]))
    assert set(smooth.last_values) == {"linear:1", "linear:3"}


def test_composite_with_a_non_differentiable_part_is_refused_by_drp_and_accepted_by_monte_carlo():
    reward = CompositeReward([LinearReward(1.0), StepReward()])
    with pytest.raises(RewardError, match=r"'1\*linear:1 \+ 1\*step' has no gradient.*DRPEstimator"):
        DRPEstimator(reward, beta=1.0)
    assert MonteCarloDRS(reward, beta=1.0).reward is reward
    DRPEstimator(CompositeReward([LinearReward(1.0), LinearReward(2.0)]), beta=1.0)


def test_running_normalisation_matches_population_statistics():
    torch.manual_seed(0)
    reward = CompositeReward([LinearReward(1.0), LinearReward(1.0, axis=1)], [1.0, 1.0], normalize=True)
    batches = [torch.randn(16, 2) * torch.tensor([10.0, 0.1]) + torch.tensor([5.0, -3.0]) for _ in range(5)]
    for b in batches:
        reward(b)
    allx = torch.cat(batches).double()
    assert torch.allclose(reward.mean, allx.mean(0), atol=1e-9)
    assert torch.allclose(reward.var, allx.var(0, unbiased=False), atol=1e-9)
    assert reward.count == 80
    # after freezing, each part contributes (r - mean) / std
    reward.freeze_stats()
    probe = torch.tensor([[15.0, -2.9]])
    want = ((probe.double() - allx.mean(0)) / allx.std(0, unbiased=False)).sum()
    assert torch.allclose(reward(probe).double(), want.reshape(1), atol=1e-5)
    assert reward.count == 80


def test_moving_average_statistics():
    reward = CompositeReward([LinearReward(1.0)], normalize=True, momentum=0.5)
    reward(torch.tensor([[0.0], [2.0]]))  # mean 1, var 1
    reward(torch.tensor([[4.0], [4.0]]))  # mixture: mean 2.5, var 0.5 * 1 + 0.5 * 0 + 0.25 * 9
    assert torch.allclose(reward.mean, torch.tensor([2.5], dtype=torch.float64))
    assert torch.allclose(reward.var, torch.tensor([2.75], dtype=torch.float64))


def test_statistics_are_saved_with_the_state_dict():
    reward = CompositeReward([LinearReward(1.0)], normalize=True)
    reward(torch.tensor([[1.0], [3.0]]))
    fresh = CompositeReward([LinearReward(1.0)], normalize=True)
    fresh.load_state_dict(reward.state_dict())
    assert fresh.mean.item() == 2.0 and fresh.count.item() == 2


def test_from_config_with_specs_and_callables():
    def brightness(images, prompts=None):
        return images.flatten(1).mean(1)

    reward = composite_from_config({"rewards": [{"reward": "toy:linear:2", "weight": 0.5}, "toy:step", brightness], "normalize": False})
    x = torch.tensor([[1.0, 3.0], [-1.0, 1.0]])
    assert torch.allclose(reward(x), torch.tensor([1.0 + 1.0 + 2.0, -1.0 + 0.0 + 0.0]))
    assert not reward.differentiable
    assert reward.typical_range is None  # brightness has no declared range


def test_typical_range_is_the_weighted_sum_of_ranges():
    reward = composite_from_config([{"reward": "toy:sigmoid:4", "weight": 2.0}, {"reward": "toy:step", "weight": -1.0}])
    assert reward.typical_range == (-1.0, 2.0)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"rewards": []}, "at least one reward"),
        ({"rewards": ["toy:step"], "normalise": True}, "unknown composite reward field.*normalise"),
        ({"rewards": [{"reward": "toy:step", "wieght": 2}]}, "unknown field.*wieght"),
        ({"rewards": [{"reward": "toy:step", "weight": "heavy"}]}, "weight 'heavy'"),
        ({"rewards": ["toy:step"], "normalize": True, "momentum": 2.0}, "momentum"),
        ({"reward": ["toy:step"]}, "needs a 'rewards' list"),
    ],
)
def test_bad_configs_are_named(config, message):
    with pytest.raises(ConfigError, match=message):
        composite_from_config(config)


def test_bad_part_is_named_through_the_composite():
    def broken(images, prompts=None):
        return torch.full((images.shape[0],), float("nan"))

    reward = CompositeReward([LinearReward(1.0), broken])
    with pytest.raises(RewardError, match="'broken' returned 2 non-finite"):
        call_reward(reward, torch.zeros(2, 2))
