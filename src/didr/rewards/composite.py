"""Weighted sums of rewards, with optional running normalisation.

    r(x, c) = sum_k w_k * n_k(r_k(x, c)),   n_k(v) = (v - mean_k) / std_k  (or the identity)

The rewards live on very different scales (PickScore about 22, ImageReward about 1, HPSv2.1
about 30), so a weighted sum of raw scores is dominated by the widest one; running normalisation
standardises each part with statistics accumulated over the batches seen so far (Welford's
algorithm, or an exponential moving average when ``momentum`` is set). The statistics are
buffers, saved with the module's state dict, and stop changing after :meth:`CompositeReward.freeze_stats`.

A composite has a gradient only when every part has one, so estimators that need the reward's
gradient (DRP, DI++) refuse a composite with a part that has none, while the Monte-Carlo DRS
estimator accepts it.

From a config (YAML or a dict)::

    rewards:
      - {reward: "pickscore:/models/PickScore_v1", weight: 1.0}
      - {reward: "imagereward:/models/ImageReward", weight: 0.5}
    normalize: true        # running standardisation of each part
    momentum: null         # null: all batches weigh equally; 0.01: moving average
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from didr.errors import ConfigError
from didr.rewards.base import Reward, call_reward, is_differentiable, reward_info, reward_name
from didr.rewards.registry import load_reward


class CompositeReward(Reward):
    """``sum_k weight_k * reward_k``, each part optionally standardised by running statistics."""

    def __init__(
        self,
        rewards: Sequence[Callable],
        weights: Sequence[float] | None = None,
        *,
        normalize: bool = False,
        momentum: float | None = None,
        eps: float = 1e-3,
        name: str | None = None,
    ):
        super().__init__()
        if not rewards:
            raise ConfigError("a composite reward needs at least one reward")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ConfigError(f"{len(rewards)} rewards but {len(weights)} weights")
        if momentum is not None and not 0 < momentum <= 1:
            raise ConfigError(f"momentum must be in (0, 1], got {momentum}")
        self.parts = list(rewards)
        for i, r in enumerate(self.parts):  # registered so that .to(device) reaches them
            if isinstance(r, nn.Module):
                self.add_module(f"part{i}", r)
        self.weights, self.normalize, self.momentum, self.eps = weights, normalize, momentum, eps
        self.part_names = [reward_name(r) for r in self.parts]
        self.name = name or " + ".join(f"{w:g}*{n}" for w, n in zip(weights, self.part_names))
        self.differentiable = all(is_differentiable(r) for r in self.parts)
        self.typical_range = None if normalize else _weighted_range(self.parts, weights)
        self.track_stats = True
        k = len(self.parts)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("var", torch.ones(k, dtype=torch.float64))
        self.last_values: dict[str, Tensor] = {}

    def freeze_stats(self) -> "CompositeReward":
        """Stop updating the running statistics (for evaluation)."""
        self.track_stats = False
        return self

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        values = torch.stack([call_reward(r, images, prompts).float() for r in self.parts])  # (K, B)
        self.last_values = {n: v.detach() for n, v in zip(self.part_names, values)}
        if self.normalize:
            if self.track_stats:
                self._update(values.detach())
            std = self.var.sqrt().clamp_min(self.eps).to(values)
            values = (values - self.mean.to(values)[:, None]) / std[:, None]
        weights = torch.tensor(self.weights, dtype=values.dtype, device=values.device)
        return (weights[:, None] * values).sum(0)

    @torch.no_grad()
    def _update(self, values: Tensor) -> None:
        b = values.shape[1]
        batch_mean = values.double().mean(1).to(self.mean.device)
        batch_var = values.double().var(1, unbiased=False).to(self.mean.device) if b > 1 else torch.zeros_like(batch_mean)
        if self.count == 0:
            self.mean.copy_(batch_mean)
            self.var.copy_(batch_var if b > 1 else torch.ones_like(batch_var))
        elif self.momentum is not None:
            delta = batch_mean - self.mean
            self.mean.add_(self.momentum * delta)
            self.var.mul_(1 - self.momentum).add_(self.momentum * (batch_var + (1 - self.momentum) * delta**2))
        else:  # Chan et al.'s parallel update of the population variance
            n, delta = self.count, batch_mean - self.mean
            total = n + b
            self.var.copy_((n * self.var + b * batch_var + delta**2 * n * b / total) / total)
            self.mean.add_(delta * b / total)
        self.count.add_(b)


def _weighted_range(rewards: Sequence[Callable], weights: Sequence[float]) -> tuple[float, float] | None:
    lo = hi = 0.0
    for r, w in zip(rewards, weights):
        rng = reward_info(r).typical_range
        if rng is None:
            return None
        a, b = w * rng[0], w * rng[1]
        lo, hi = lo + min(a, b), hi + max(a, b)
    return (lo, hi)


_ENTRY_KEYS = {"reward", "weight"}
_CONFIG_KEYS = {"rewards", "normalize", "momentum", "eps", "name"}


def composite_from_config(config: Any, loader: Callable | None = None, **load_kwargs) -> CompositeReward:
    """A :class:`CompositeReward` from a config: a dict with ``rewards`` (and ``normalize``,
    ``momentum``, ``eps``, ``name``), or just the list of rewards.

    Each entry is a reward spec string, a callable, or ``{reward: SPEC, weight: W}``; ``loader``
    turns specs into rewards (default :func:`didr.rewards.registry.load_reward`, given ``load_kwargs``).
    """
    loader = loader or load_reward
    if isinstance(config, (list, tuple)):
        config = {"rewards": list(config)}
    if not isinstance(config, dict) or "rewards" not in config:
        raise ConfigError("a composite reward config needs a 'rewards' list")
    unknown = set(config) - _CONFIG_KEYS
    if unknown:
        raise ConfigError(f"unknown composite reward field(s) {sorted(unknown)}; allowed: {sorted(_CONFIG_KEYS)}")
    rewards, weights = [], []
    for entry in config["rewards"]:
        spec, weight = _parse_entry(entry)
        rewards.append(spec if callable(spec) else loader(spec, **load_kwargs))
        weights.append(weight)
    return CompositeReward(
        rewards, weights, normalize=bool(config.get("normalize", False)), momentum=config.get("momentum"),
        eps=float(config.get("eps", 1e-3)), name=config.get("name"),
    )


def _parse_entry(entry: Any) -> tuple[Any, float]:
    if isinstance(entry, str) or callable(entry):
        return entry, 1.0
    if not isinstance(entry, dict) or "reward" not in entry:
        raise ConfigError(f"a composite reward entry must be a spec string or {{reward: SPEC, weight: W}}, got {entry!r}")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)} in composite reward entry {entry!r}; allowed: {sorted(_ENTRY_KEYS)}")
    try:
        return entry["reward"], float(entry.get("weight", 1.0))
    except (TypeError, ValueError):
        raise ConfigError(f"weight {entry.get('weight')!r} of reward {entry['reward']!r} is not a number") from None
