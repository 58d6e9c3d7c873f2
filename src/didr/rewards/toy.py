"""Smooth rewards on points, for the toy experiments (method.md §5)."""

from __future__ import annotations

import torch
from torch import Tensor

from didr.errors import ConfigError
from didr.rewards.base import Reward


class SigmoidReward(Reward):
    """r(x) = sigmoid(k x[axis]): favours x > 0 on one axis, in (0, 1)."""

    typical_range = (0.0, 1.0)

    def __init__(self, sharpness: float = 4.0, axis: int = 0):
        super().__init__()
        self.sharpness, self.axis = float(sharpness), axis
        self.name = f"sigmoid:{sharpness:g}"

    def forward(self, x: Tensor, prompts=None) -> Tensor:
        return torch.sigmoid(self.sharpness * x.reshape(x.shape[0], -1)[:, self.axis])


class LinearReward(Reward):
    """r(x) = c x[axis]: tilting a Gaussian by it shifts its mean by c sigma^2 / beta."""

    def __init__(self, slope: float = 1.0, axis: int = 0):
        super().__init__()
        self.slope, self.axis = float(slope), axis
        self.name = f"linear:{slope:g}"

    def forward(self, x: Tensor, prompts=None) -> Tensor:
        return self.slope * x.reshape(x.shape[0], -1)[:, self.axis]


class StepReward(Reward):
    """r(x) = 1[x[axis] > 0]: no gradient, for the Monte-Carlo DRS estimator only."""

    differentiable = False
    typical_range = (0.0, 1.0)
    name = "step"

    def __init__(self, axis: int = 0):
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor, prompts=None) -> Tensor:
        return (x.reshape(x.shape[0], -1)[:, self.axis] > 0).to(x.dtype)


TOY_REWARDS = {"sigmoid": SigmoidReward, "linear": LinearReward, "step": StepReward}


def parse_toy_reward(spec: str) -> Reward:
    """``name[:param]``, e.g. ``sigmoid:4``, ``linear:0.5``, ``step``."""
    name, _, arg = spec.partition(":")
    if name not in TOY_REWARDS:
        raise ConfigError(f"unknown reward {spec!r}; choose one of {', '.join(k + ':PARAM' if k != 'step' else k for k in TOY_REWARDS)}")
    if not arg:
        return TOY_REWARDS[name]()
    try:
        return TOY_REWARDS[name](float(arg))
    except ValueError:
        raise ConfigError(f"reward {spec!r}: parameter {arg!r} is not a number") from None
