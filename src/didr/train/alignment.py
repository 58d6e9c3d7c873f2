"""What the loop trains: an :class:`Alignment` of roles and objective, and the errors that stop a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

from didr.errors import DidrError
from didr.objectives.methods import Objective
from didr.rewards.base import NonFiniteRewardError


@dataclass
class Alignment:
    """Everything the loop trains or queries. ``sample_inputs(n)`` returns generator inputs (z, cond).
    ``networks``: the distinct networks the roles call, each listed once even when several roles
    share it; under FSDP2 each is sharded block by block (default: the three roles themselves)."""

    generator: nn.Module
    reference: nn.Module
    ta: nn.Module | None
    objective: Objective
    sample_inputs: Callable[[int], tuple[Tensor, Any]]
    networks: list[nn.Module] = field(default_factory=list)

    def all_networks(self) -> list[nn.Module]:
        if self.networks:
            return list(self.networks)
        return [m for m in (self.generator, self.ta, self.reference) if m is not None]


class TrainingError(DidrError):
    """The run cannot go on (too many non-finite steps in a row)."""


class RewardStop(TrainingError, NonFiniteRewardError):
    """The run stopped because the reward kept returning NaN or inf."""
