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

from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.errors import RewardError


class Reward(nn.Module):
    """Base class for rewards with metadata. Subclasses implement ``forward(images, prompts)``."""

    name: str = "reward"
    differentiable: bool = True
    higher_is_better: bool = True
    typical_range: tuple[float, float] | None = None

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


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
        raise RewardError(f"reward {name!r} returned {bad} non-finite value(s) (NaN or inf) in a batch of {images.shape[0]}")
    return out
