"""A reward-hacking alarm over a run's held-out evaluations.

Each evaluation of the run (``train.eval_every``) draws the same held-out prompts at the same seeds
and scores every image with the trained reward and with rewards the run does not train on (held-out
rewards); it also measures the diversity across seeds. Reward hacking shows as the trained reward
rising while a held-out reward falls; collapse as the diversity falling. The rule, over the
evaluations so far:

- **hacking**: at ``confirm`` evaluations in a row (default 2), from the evaluation ``window - 1``
  evaluations back (default: 2) to that one, the trained reward rose and some held-out reward fell,
  each beyond chance: the 95% interval of the paired per-image change (the same prompt and seed at
  both evaluations, bootstrapped over prompts, as ``didr eval`` compares two generators) lies above
  zero for the one and below zero for the other;
- **collapse**: the diversity fell below ``collapse`` (default 0.5) times its value at the first
  evaluation.

Pairing is what makes the rule sensitive: the same images' change is far less noisy than the spread
of a reward over prompts. Evaluations recorded without per-image scores fall back to that spread
(``paired=False``): a change counts when it exceeds the half-width of the reward's interval at the
first evaluation, the held-out rewards averaged in those units (and ``drop`` of them for a fall).

The alarm warns (a line in ``train.log``); with ``train.alarm: stop`` the run stops at the first alarm.
Either way the best evaluation by the held-out criterion (the mean of the held-out rewards in units of
their first half-width, or the trained reward when there are none) is recorded, and the run keeps
that generator. ``benchmarks/results/alarm_mnist.md`` measures the rule where the truth is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from didr.eval.image_metrics import mean_pairwise_distance
from didr.eval.stats import Interval, difference_interval
from didr.files import atomic_write_text

TRAINED = "trained"  # the trained reward's name among an evaluation's intervals


@dataclass(frozen=True)
class Evaluation:
    step: int
    trained: float  # the trained reward's mean on the held-out prompts
    trained_noise: float  # the half-width of its interval
    held_out: dict[str, float] = field(default_factory=dict)  # held-out reward -> mean
    held_out_noise: dict[str, float] = field(default_factory=dict)
    diversity: float | None = None
    scores: dict[str, list[list[float]]] = field(default_factory=dict)  # reward -> per-image scores, (prompts, seeds)


def evaluation_of(step: int, intervals: dict[str, Interval], diversity: float | None, scores: dict[str, Any] | None = None) -> Evaluation:
    """An evaluation from its rewards' intervals over held-out prompts (``TRAINED`` and the held-out
    ones) and their per-image ``scores`` (prompts x seeds; for the paired rule)."""
    half = {k: (v.high - v.low) / 2 for k, v in intervals.items()}
    held_out = [k for k in intervals if k != TRAINED]
    grids = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in (scores or {}).items() if k in intervals}
    return Evaluation(step, intervals[TRAINED].estimate, half[TRAINED], {k: intervals[k].estimate for k in held_out},
                      {k: half[k] for k in held_out}, diversity, grids)


def seed_diversity(images: Tensor) -> float:
    """Mean over prompts of the RMS distance between the images of two of its seeds, over every pair:
    ``images`` (prompts, seeds, ...) in [-1, 1]."""
    prompts, seeds = images.shape[:2]
    flat = images.reshape(prompts * seeds, -1)
    return mean_pairwise_distance(flat, [i // seeds for i in range(len(flat))])[0] / flat.shape[1] ** 0.5  # Euclidean -> RMS


class EvaluationLog:
    """``evaluations.jsonl``: a line per evaluation of a run (the evaluation, its intervals, its alarms,
    the best step so far); a resumed run reads it back, and a rewritten step replaces its line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []

    def evaluations(self) -> list[Evaluation]:
        return [Evaluation(**r["evaluation"]) for r in self.records()]

    def write(self, record: dict[str, Any]) -> None:
        step = record["evaluation"]["step"]
        kept = [json.dumps(r) for r in self.records() if r["evaluation"]["step"] < step]
        atomic_write_text("".join(line + "\n" for line in [*kept, json.dumps(record)]), self.path)


@dataclass(frozen=True)
class Alarm:
    step: int
    kind: str  # hacking | collapse
    message: str


@dataclass
class HackingAlarm:
    window: int = 3
    collapse: float = 0.5
    paired: bool = True  # the paired per-image rule where the evaluations hold their scores
    level: float = 0.95  # the paired intervals' level
    confirm: int = 2  # evaluations in a row that must show hacking before it fires
    drop: float = 1.0  # the unpaired rule's fall, in half-widths
    history: list[Evaluation] = field(default_factory=list)

    def add(self, evaluation: Evaluation) -> list[Alarm]:
        """Record an evaluation (replacing any of its step or later: a resumed run); the alarms it raises."""
        self.history = [e for e in self.history if e.step < evaluation.step] + [evaluation]
        shown = [self._hacking(len(self.history) - k) for k in range(self.confirm)]
        hacking = shown[0] if all(a is not None for a in shown) else None
        return [a for a in (hacking, self._collapse()) if a is not None]

    def held_out_score(self, evaluation: Evaluation) -> float:
        """The held-out criterion: mean held-out reward in noise units of the first evaluation (the
        trained reward when there is none)."""
        first = self.history[0]
        if not evaluation.held_out:
            return evaluation.trained / max(first.trained_noise, 1e-12)
        return float(np.mean([v / max(first.held_out_noise.get(k, 1.0), 1e-12) for k, v in evaluation.held_out.items()]))

    def best(self) -> Evaluation | None:
        return max(self.history, key=self.held_out_score) if self.history else None

    def _hacking(self, end: int) -> Alarm | None:
        """Whether the evaluations up to ``end`` (exclusive) show hacking at their last."""
        if end < self.window or not self.history[0].held_out:
            return None
        start, now = self.history[end - self.window], self.history[end - 1]
        if self.paired and all(k in start.scores and k in now.scores for k in (TRAINED, *now.held_out)):
            return self._paired(start, now)
        return self._unpaired(start, now)

    def _paired(self, start: Evaluation, now: Evaluation) -> Alarm | None:
        change = {k: difference_interval(now.scores[k], start.scores[k], level=self.level) for k in (TRAINED, *now.held_out)}
        fell = {k: v for k, v in change.items() if k != TRAINED and v.high < 0}
        if change[TRAINED].low > 0 and fell:
            detail = ", ".join(f"{k} by {-v.estimate:.3g} [{-v.high:.3g}, {-v.low:.3g}]" for k, v in fell.items())
            return Alarm(now.step, "hacking", f"reward hacking? from step {start.step} to {now.step} the trained reward rose by "
                                              f"{change[TRAINED].estimate:.3g} [{change[TRAINED].low:.3g}, {change[TRAINED].high:.3g}] "
                                              f"while held-out rewards fell: {detail} ({self.level:.0%} intervals, paired per image)")
        return None

    def _unpaired(self, start: Evaluation, now: Evaluation) -> Alarm | None:
        first = self.history[0]
        rise = (now.trained - start.trained) / max(first.trained_noise, 1e-12)
        falls = {k: (now.held_out[k] - start.held_out[k]) / max(first.held_out_noise.get(k, 1.0), 1e-12) for k in now.held_out}
        if rise > 1.0 and float(np.mean(list(falls.values()))) < -self.drop:
            detail = ", ".join(f"{k} {v:+.1f}" for k, v in falls.items())
            return Alarm(now.step, "hacking", f"reward hacking? from step {start.step} to {now.step} the trained reward rose by {rise:.1f} "
                                              f"half-widths while the held-out rewards fell ({detail})")
        return None

    def _collapse(self) -> Alarm | None:
        first, now = self.history[0], self.history[-1]
        if first.diversity is None or now.diversity is None or len(self.history) < 2:
            return None
        if now.diversity < self.collapse * first.diversity:
            return Alarm(now.step, "collapse", f"collapse? diversity across seeds fell to {now.diversity:.3g} "
                                               f"from {first.diversity:.3g} at step {first.step}")
        return None


def lasting_decline(values: list[float], halves: list[float], min_length: int = 2) -> int | None:
    """The first index from which ``values`` stay, to the end, below their best so far by more than
    that best's 95% half-width (``halves``), for at least ``min_length`` evaluations; None if none.
    The truth an alarm is scored against where a gold attribute is known."""
    best, onset = 0, None
    for k, value in enumerate(values):
        best = k if value > values[best] else best
        onset = (k if onset is None else onset) if value < values[best] - halves[best] else None
    return onset if onset is not None and len(values) - onset >= min_length else None
