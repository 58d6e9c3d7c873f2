"""Smooth rewards on points, for the toy experiments (docs/method.md §5).

Every toy reward varies along one direction only: r(x) = f(w . x) (a "ridge"). ``w`` is either a
full direction (``linear:1,0,0.5``) or a slope along one axis (``linear:2`` is w = 2 e_0 in any
dimension). Knowing w lets the exact answers reduce to one-dimensional integrals in any dimension:
the exact DRS (M9) and the tilted optimum (M6, M14).
"""

from __future__ import annotations

import torch
from torch import Tensor

from didr.errors import ConfigError
from didr.rewards.base import Reward


class RidgeReward(Reward):
    """r(x) = f(w . x). ``direction`` (d numbers) gives w; without it w = ``scale`` e_``axis``."""

    def __init__(self, scale: float = 1.0, axis: int = 0, direction: list[float] | None = None):
        super().__init__()
        self.scale, self.axis = float(scale), axis
        self.given = None if direction is None else torch.as_tensor(direction, dtype=torch.float64).reshape(-1)
        if self.given is not None and not bool(self.given.any()):
            raise ConfigError(f"reward direction must not be all zeros, got {self.given.tolist()}")

    def direction(self, dim: int) -> Tensor:
        """w as a (dim,) float64 tensor; a given direction must have ``dim`` components."""
        if self.given is None:
            if not 0 <= self.axis < dim:
                raise ConfigError(f"reward {self.name!r}: axis {self.axis} does not exist in {dim} dimensions")
            w = torch.zeros(dim, dtype=torch.float64)
            w[self.axis] = 1.0
        elif self.given.numel() != dim:
            raise ConfigError(f"reward {self.name!r}: its direction has {self.given.numel()} components, the data are {dim}-dimensional")
        else:
            w = self.given
        return self.scale * w

    def profile(self, u: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: Tensor, prompts=None) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return self.profile(flat @ self.direction(flat.shape[1]).to(flat.dtype))


class SigmoidReward(RidgeReward):
    """r(x) = sigmoid(k w . x): favours the side w . x > 0, in (0, 1)."""

    typical_range = (0.0, 1.0)

    def __init__(self, sharpness: float = 4.0, axis: int = 0, direction: list[float] | None = None):
        super().__init__(sharpness, axis, direction)
        self.sharpness = float(sharpness)
        self.name = f"sigmoid:{sharpness:g}" + (f":{_join(self.given)}" if self.given is not None else "")

    def profile(self, u: Tensor) -> Tensor:
        return torch.sigmoid(u)


class LinearReward(RidgeReward):
    """r(x) = w . x: tilting N(mu, sigma^2 I) by exp(r / beta) shifts its mean by sigma^2 w / beta (M14)."""

    is_linear = True  # the exact optimum is then in closed form (didr.diffusion.optimum)

    def __init__(self, slope: float = 1.0, axis: int = 0, direction: list[float] | None = None):
        super().__init__(slope, axis, direction)
        self.slope = float(slope)
        self.name = f"linear:{_join(self.given)}" if self.given is not None else f"linear:{slope:g}"

    def profile(self, u: Tensor) -> Tensor:
        return u


class StepReward(RidgeReward):
    """r(x) = 1[x[axis] > 0]: no gradient, for the Monte-Carlo DRS estimator only."""

    differentiable = False
    typical_range = (0.0, 1.0)
    name = "step"

    def __init__(self, axis: int = 0):
        super().__init__(1.0, axis)

    def profile(self, u: Tensor) -> Tensor:
        return (u > 0).to(u.dtype)


def _join(w: Tensor) -> str:
    return ",".join(f"{float(v):g}" for v in w)


def _numbers(text: str, spec: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"reward {spec!r}: {what} {text!r} must be comma-separated numbers") from None
    if not values:
        raise ConfigError(f"reward {spec!r}: {what} is empty")
    return values


USAGE = "sigmoid:K, sigmoid:K:w1,...,wd, linear:C, linear:w1,...,wd or step"


def parse_toy_reward(spec: str) -> RidgeReward:
    """``sigmoid[:K[:w1,...,wd]]``, ``linear[:C]``, ``linear:w1,...,wd``, ``step``.

    A single number is a slope along the first axis; a comma-separated list is the full direction w
    (its length must match the data's dimension, checked where the data are known).
    """
    name, *parts = spec.split(":")
    if name not in ("sigmoid", "linear", "step"):
        raise ConfigError(f"unknown reward {spec!r}; choose one of {USAGE}")
    if name == "step":
        if parts:
            raise ConfigError(f"reward {spec!r}: step takes no parameter")
        return StepReward()
    if name == "linear":
        if len(parts) > 1:
            raise ConfigError(f"reward {spec!r}: expected linear:C or linear:w1,...,wd")
        if not parts:
            return LinearReward()
        values = _numbers(parts[0], spec, "slope" if "," not in parts[0] else "direction")
        return LinearReward(values[0]) if len(values) == 1 and "," not in parts[0] else LinearReward(direction=values)
    if len(parts) > 2:
        raise ConfigError(f"reward {spec!r}: expected sigmoid:K or sigmoid:K:w1,...,wd")
    sharpness = _numbers(parts[0], spec, "sharpness")[0] if parts else 4.0
    if parts and "," in parts[0]:
        raise ConfigError(f"reward {spec!r}: the sharpness K is one number; give a direction as sigmoid:K:w1,...,wd")
    direction = _numbers(parts[1], spec, "direction") if len(parts) == 2 else None
    return SigmoidReward(sharpness, direction=direction)
