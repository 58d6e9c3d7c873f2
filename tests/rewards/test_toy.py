"""Toy rewards along a direction: values, gradients, and one-line refusals of malformed specs."""

import pytest
import torch

from didr.errors import ConfigError
from didr.rewards.toy import LinearReward, SigmoidReward, StepReward, parse_toy_reward


def test_direction_rewards_are_functions_of_w_dot_x():
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]], requires_grad=True)
    lin = parse_toy_reward("linear:1,0.5,-2")
    torch.testing.assert_close(lin(x), torch.tensor([4.0, -5.75]))
    (grad,) = torch.autograd.grad(lin(x).sum(), x)
    torch.testing.assert_close(grad, torch.tensor([[1.0, 0.5, -2.0]] * 2))
    sig = parse_toy_reward("sigmoid:3:0,1,0")
    torch.testing.assert_close(sig(x.detach()), torch.sigmoid(3 * x.detach()[:, 1]))
    assert isinstance(lin, LinearReward) and isinstance(sig, SigmoidReward)
    assert sig.name == "sigmoid:3:0,1,0" and lin.name == "linear:1,0.5,-2"


def test_a_single_number_is_a_slope_along_the_first_axis_in_any_dimension():
    x = torch.randn(5, 4)
    torch.testing.assert_close(parse_toy_reward("linear:2")(x), 2 * x[:, 0])
    torch.testing.assert_close(parse_toy_reward("sigmoid:4")(x), torch.sigmoid(4 * x[:, 0]))
    torch.testing.assert_close(parse_toy_reward("linear:2").direction(4), torch.tensor([2.0, 0, 0, 0], dtype=torch.float64))
    assert isinstance(parse_toy_reward("step"), StepReward) and parse_toy_reward("linear").slope == 1.0


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("banana:3", "unknown reward 'banana:3'"),
        ("linear:1,a", "direction '1,a' must be comma-separated numbers"),
        ("linear:x", "slope 'x' must be comma-separated numbers"),
        ("linear:0,0", "must not be all zeros"),
        ("linear:1:2", "expected linear:C or linear:w1,...,wd"),
        ("sigmoid:4:1,b", "direction '1,b'"),
        ("sigmoid:1,2", "the sharpness K is one number"),
        ("sigmoid:4:1:2", "expected sigmoid:K or sigmoid:K:w1,...,wd"),
        ("sigmoid:4:", "direction '' must be comma-separated numbers"),
        ("step:2", "step takes no parameter"),
    ],
)
def test_malformed_specs_are_refused_in_one_line(spec, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        parse_toy_reward(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_direction_of_the_wrong_length_is_refused_when_the_data_are_known():
    reward = parse_toy_reward("sigmoid:4:1,2,3")
    with pytest.raises(ConfigError, match="direction has 3 components, the data are 2-dimensional"):
        reward(torch.zeros(4, 2))
