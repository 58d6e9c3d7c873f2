"""The reward interface.

A reward is any callable ``reward(images, prompts) -> Tensor`` of shape (batch,), higher is
better, differentiable with respect to ``images`` when an estimator needs its gradient (DI++,
ReFL, DRP). ``images`` is whatever the generator produces in data space: points (B, D) for the toy,
pixel tensors (B, C, H, W) in [-1, 1] for image experiments. ``prompts`` is the conditioning (class
labels, a list of strings, or None).

:class:`Reward` adds metadata (name, whether it has a gradient, a typical range);
:func:`call_reward` is the one place rewards are called, and it refuses NaN, inf and wrong shapes
with a message that names the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.errors import RewardError


class NonFiniteRewardError(RewardError):
    """A reward returned NaN or inf for some input: the training loop skips the step and counts it
    (a wrong type or shape, by contrast, is a programming error and stops the run)."""


class Reward(nn.Module):
    """Base class for rewards with metadata. Subclasses implement ``forward(images, prompts)``."""

    name: str = "reward"
    differentiable: bool = True
    higher_is_better: bool = True
    typical_range: tuple[float, float] | None = None

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class FrozenReward(Reward):
    """A reward wrapping a pretrained model that must stay in evaluation mode.

    ``.train()`` on a parent module would otherwise switch on the reward model's dropout and make
    its scores random; here it is a no-op.
    """

    def train(self, mode: bool = True) -> "FrozenReward":
        return super().train(False)


def reward_name(reward: Callable) -> str:
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


def is_differentiable(reward: Callable) -> bool:
    return bool(getattr(reward, "differentiable", True))


def call_reward(reward: Callable, images: Tensor, prompts: Any = None) -> Tensor:
    """Call ``reward`` and check that it returned a finite (batch,) tensor."""
    out = reward(images, prompts)
    name = reward_name(reward)
    if not isinstance(out, Tensor):
        raise RewardError(f"reward {name!r} returned {type(out).__name__}, expected a tensor of shape ({images.shape[0]},)")
    if out.shape != (images.shape[0],):
        raise RewardError(f"reward {name!r} returned shape {tuple(out.shape)}, expected ({images.shape[0]},)")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise NonFiniteRewardError(f"reward {name!r} returned {bad} non-finite value(s) (NaN or inf) in a batch of {images.shape[0]}")
    return out


@dataclass(frozen=True)
class RewardInfo:
    """A reward's metadata, read from its attributes with defaults for plain callables."""

    name: str
    differentiable: bool = True
    higher_is_better: bool = True
    typical_range: tuple[float, float] | None = None


def reward_info(reward: Callable) -> RewardInfo:
    """Metadata of any reward: a :class:`Reward`, or a plain callable (assumed differentiable)."""
    rng = getattr(reward, "typical_range", None)
    return RewardInfo(
        name=reward_name(reward),
        differentiable=is_differentiable(reward),
        higher_is_better=bool(getattr(reward, "higher_is_better", True)),
        typical_range=tuple(rng) if rng is not None else None,
    )


def prompt_list(prompts: Any, batch: int, name: str) -> list[str]:
    """Text prompts as a list of ``batch`` strings; one string is repeated for the whole batch."""
    if isinstance(prompts, str):
        return [prompts] * batch
    if prompts is None or not all(isinstance(p, str) for p in prompts):
        raise RewardError(f"reward {name!r} needs text prompts (a string or a list of {batch} strings), got {type(prompts).__name__}")
    prompts = list(prompts)
    if len(prompts) != batch:
        raise RewardError(f"reward {name!r} got {len(prompts)} prompts for {batch} images")
    return prompts
