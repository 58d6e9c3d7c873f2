"""A reward-hacking alarm over a run's held-out evaluations.

Each evaluation of the run (``train.eval_every``) gives, on held-out prompts with fixed seeds, the
trained reward, rewards the run does not train on (held-out rewards), and the diversity across
seeds. Reward hacking shows as the trained reward rising while the held-out rewards fall; collapse
as the diversity falling. The rule, over the evaluations so far:

- **hacking**: over the last ``window`` evaluations the trained reward rose by more than its noise
  while the mean of the held-out rewards, each in units of its own noise, fell by more than
  ``drop`` (default 1) noise units;
- **collapse**: the diversity fell below ``collapse`` (default 0.5) times its value at the first
  evaluation.

A reward's noise is the half-width of its 95% interval at the first evaluation (the interval over
held-out prompts), so the rule needs no threshold in a reward's own units. The alarm warns (a line in
``train.log``); with ``train.alarm: stop`` the run stops at the first alarm. Either way the best
evaluation by the held-out criterion (the mean of the held-out rewards in noise units, or the
trained reward when there are none) is recorded, and the run keeps that generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    step: int
    trained: float  # the trained reward's mean on the held-out prompts
    trained_noise: float  # the half-width of its interval
    held_out: dict[str, float] = field(default_factory=dict)  # held-out reward -> mean
    held_out_noise: dict[str, float] = field(default_factory=dict)
    diversity: float | None = None


@dataclass(frozen=True)
class Alarm:
    step: int
    kind: str  # hacking | collapse
    message: str


@dataclass
class HackingAlarm:
    window: int = 3
    drop: float = 1.0
    collapse: float = 0.5
    history: list[Evaluation] = field(default_factory=list)

    def add(self, evaluation: Evaluation) -> list[Alarm]:
        """Record an evaluation; the alarms it raises."""
        self.history.append(evaluation)
        return [a for a in (self._hacking(), self._collapse()) if a is not None]

    def held_out_score(self, evaluation: Evaluation) -> float:
        """The held-out criterion: mean held-out reward in noise units of the first evaluation (the
        trained reward when there is none)."""
        first = self.history[0]
        if not evaluation.held_out:
            return evaluation.trained / max(first.trained_noise, 1e-12)
        return float(np.mean([v / max(first.held_out_noise.get(k, 1.0), 1e-12) for k, v in evaluation.held_out.items()]))

    def best(self) -> Evaluation | None:
        return max(self.history, key=self.held_out_score) if self.history else None

    def _hacking(self) -> Alarm | None:
        if len(self.history) < self.window or not self.history[0].held_out:
            return None
        first, start, now = self.history[0], self.history[-self.window], self.history[-1]
        rise = (now.trained - start.trained) / max(first.trained_noise, 1e-12)
        falls = {k: (now.held_out[k] - start.held_out[k]) / max(first.held_out_noise.get(k, 1.0), 1e-12) for k in now.held_out}
        fall = float(np.mean(list(falls.values())))
        if rise > 1.0 and fall < -self.drop:
            detail = ", ".join(f"{k} {v:+.1f}" for k, v in falls.items())
            return Alarm(now.step, "hacking", f"reward hacking? from step {start.step} to {now.step} the trained reward rose by {rise:.1f} "
                                              f"noise units while the held-out rewards fell ({detail})")
        return None

    def _collapse(self) -> Alarm | None:
        first, now = self.history[0], self.history[-1]
        if first.diversity is None or now.diversity is None or len(self.history) < 2:
            return None
        if now.diversity < self.collapse * first.diversity:
            return Alarm(now.step, "collapse", f"collapse? diversity across seeds fell to {now.diversity:.3g} "
                                               f"from {first.diversity:.3g} at step {first.step}")
        return None
