"""A digits run's evaluations (``train.eval_every``), the reward-hacking alarm's inputs and its truth.

As a text-to-image run's (:mod:`didr.experiments.heldout`), every evaluation draws held-out prompts at
fixed seeds, each seed's noise the same for every prompt: the prompts are phrasings never trained on
(``unseen``; class prompts have none, so their digits are used), balanced over the digits. It
scores them with the trained reward and a held-out reward (log p(c | x) under a third classifier the
run never trains on, :func:`~didr.experiments.digits.rewards.heldout_classifier`), each a mean with
a 95% bootstrap interval over prompts, and measures the diversity across seeds and the drift from
the initial generator on the same noise. These feed :class:`didr.eval.alarm.HackingAlarm`.

Beside them it records what the alarm cannot see and a user would want it to track: the gold
attribute and the prompt accuracy under the evaluation classifier, and the ink outside the digits'
support. Grids go to ``OUT/samples/step-NNNNNN.png`` and the evaluations to
``OUT/samples/evaluations.jsonl``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from didr.eval.alarm import TRAINED, EvaluationLog, HackingAlarm, evaluation_of, seed_diversity
from didr.eval.evaluate import drift_interval
from didr.eval.plots import read_rgb, save_grid
from didr.eval.stats import mean_interval
from didr.experiments.digits.evaluate import EVAL_SEED, per_image
from didr.experiments.digits.rewards import data_key, heldout_classifier
from didr.experiments.digits.stages import DigitStages, generate
from didr.rewards.base import call_reward
from didr.rewards.digits import ClassifierReward, outside_ink
from didr.train.evaluation import EvalOutcome

HELD_OUT = "heldout_prompt"  # the held-out reward's name


class DigitsWatch:
    def __init__(self, stages: DigitStages, out_dir: Path | None, stage_dir: Path | None, seed: int = 0, prompts: int = 20, seeds: int = 8,
                 alarm: HackingAlarm | None = None):
        self.s, self.seeds = stages, seeds
        self.out = Path(out_dir) / "samples" if out_dir is not None else None
        split = "unseen" if stages.prompts.kind == "text" else "seen"
        index = stages.prompts.balanced(prompts, split, torch.Generator().manual_seed(EVAL_SEED + 1))
        self.cond = stages.prompts.batch(index.repeat_interleave(seeds), split)
        noise = torch.stack([torch.randn(stages.data.shape, generator=torch.Generator().manual_seed(s)) for s in range(seeds)])
        self.z = noise.repeat(prompts, 1, 1, 1)  # image (p, s) from seed s's noise, the same for every prompt
        self.shape = (prompts, seeds)
        self.held_out = ClassifierReward(heldout_classifier(stages.cfg, stages.data, data_key(stages.cfg, seed), stage_dir, seed))
        self.initial = generate(stages.generator, self.z, self.cond).clamp(-1, 1)
        self.log = EvaluationLog(self.out / "evaluations.jsonl") if self.out is not None else None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.alarm = alarm or HackingAlarm()
        if self.log is not None:
            self.alarm.history[:] = self.log.evaluations()  # a resumed run's earlier evaluations

    @torch.no_grad()
    def scores(self, images: Tensor) -> dict[str, Tensor]:
        """Per image: the trained reward, the held-out one, and the truth the alarm does not see, each
        as the benchmark's evaluation computes it."""
        per = per_image(self.s, images, self.cond)
        return {TRAINED: per.rewards["reward"], HELD_OUT: call_reward(self.held_out, images, self.cond), "gold": per.gold,
                "prompt_accuracy": per.prompt_correct, "outside_ink": outside_ink(images, self.s.reward.support)}

    def __call__(self, generator: nn.Module, step: int) -> EvalOutcome:
        was_training = generator.training
        generator.eval()
        try:
            images = generate(generator, self.z, self.cond).clamp(-1, 1)
        finally:
            generator.train(was_training)
        by_prompt = images.reshape(*self.shape, *images.shape[1:])
        grids = {k: v.double().numpy().reshape(self.shape) for k, v in self.scores(images).items()}
        intervals = {k: mean_interval(v) for k, v in grids.items()}
        diversity = seed_diversity(by_prompt)
        drift = drift_interval(images, self.initial, self.shape)
        evaluation = evaluation_of(step, {k: intervals[k] for k in (TRAINED, HELD_OUT)}, diversity, grids)
        alarms = self.alarm.add(evaluation)
        outcome = EvalOutcome({**{f"eval/{k}": v.estimate for k, v in intervals.items()}, "eval/diversity": diversity, "eval/drift": drift.estimate},
                              alarms=[a.message for a in alarms], best=self.alarm.best().step == step)
        if self.out is not None:
            grid = self.out / f"step-{step:06d}.png"
            save_grid(by_prompt[: min(10, self.shape[0])].transpose(0, 1).reshape(-1, *images.shape[1:]),
                      grid, nrow=min(10, self.shape[0]), title=f"step {step}")
            outcome.images["samples"] = read_rgb(grid)
            self.log.write({"evaluation": evaluation.__dict__, "intervals": {k: v.to_dict() for k, v in intervals.items()},
                            "drift": drift.to_dict(), "alarms": [a.__dict__ for a in alarms], "best_step": self.alarm.best().step})
        return outcome


