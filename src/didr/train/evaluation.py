"""Evaluations during a run: every ``train.eval_every`` steps (and before the first) the experiment's
evaluation runs on the main process; its scalars go to ``metrics.jsonl`` and the trackers, its
images to the trackers, its alarms to ``train.log``. ``train.alarm`` says what an alarm does:
``warn`` (a line), ``stop`` (the run stops and exports the generator of its best evaluation), or
``off`` (the evaluation still runs, its alarms are not raised).

The evaluation itself belongs to the experiment (text-to-image: :mod:`didr.experiments.heldout`):
any callable ``evaluate(generator, step) -> EvalOutcome``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn


@dataclass
class EvalOutcome:
    scalars: dict[str, float]
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (H, W, 3) uint8
    alarms: list[str] = field(default_factory=list)  # one line each
    best: bool = False  # the best evaluation so far by the experiment's held-out criterion


class RunEvaluation:
    def __init__(self, evaluate: Callable[[nn.Module, int], EvalOutcome], every: int, alarm: str, log_line: Callable[[str], None]):
        self.evaluate, self.every, self.alarm, self.log_line = evaluate, every, alarm, log_line
        self.best_step: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, step: int, generator: nn.Module, metrics) -> bool:
        """Evaluate at ``step``; log; keep the generator's trained weights when it is the best so far.
        Returns whether the run should stop (an alarm under ``train.alarm: stop``)."""
        outcome = self.evaluate(generator, step)
        metrics.write(step, outcome.scalars)
        metrics.images(step, outcome.images)
        if outcome.best:
            self.best_step = step
            self.best_weights = {k: p.detach().to("cpu", copy=True) for k, p in generator.named_parameters() if p.requires_grad}
        if self.alarm == "off":
            return False
        for line in outcome.alarms:
            self.log_line(f"alarm at step {step}: {line}")
        return self.alarm == "stop" and bool(outcome.alarms)

    @torch.no_grad()
    def restore_best(self, generator: nn.Module) -> int | None:
        """Put the best evaluation's trained weights back into ``generator``; the step they are from."""
        if self.best_weights is None:
            return None
        params = dict(generator.named_parameters())
        for k, v in self.best_weights.items():
            params[k].copy_(v.to(params[k].device))
        return self.best_step
