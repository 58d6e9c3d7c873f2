"""A text-to-image run's held-out evaluation, every ``train.eval_every`` steps and before the first.

The generator draws every held-out prompt (``backbone.eval_prompts``: ``split:N``, the last N of the
prompt set, kept out of training; or a prompt file of their own) at ``backbone.eval_seeds`` fixed
seeds, each image from its own seed's noise, as ``didr eval`` draws them. The images go to
``OUT/samples/step-NNNNNN/`` with a grid ``OUT/samples/step-NNNNNN.png`` (prompts x seeds), and are
scored by the code behind ``didr eval`` and ``didr score``: the trained reward, and the held-out
rewards (``backbone.eval_rewards``) that the run does not train on. Also measured: the diversity
(RMS pixel distance between the seeds of a prompt, averaged over prompts) and the drift (RMS pixel
distance from the images of the first evaluation, same prompt and seed).

Every evaluation is a line of ``OUT/samples/evaluations.jsonl`` and feeds the reward-hacking alarm
(:mod:`didr.eval.alarm`); a resumed run reads the lines back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from didr.eval.alarm import TRAINED, Alarm, Evaluation, EvaluationLog, HackingAlarm, evaluation_of, seed_diversity
from didr.eval.evaluate import drift_interval
from didr.eval.generators import image_name, save_png
from didr.eval.plots import image_grid, read_rgb
from didr.eval.score import load_image, score_images
from didr.eval.stats import Interval, mean_interval
from didr.models.text import PromptSet
from didr.train.evaluation import EvalOutcome


class HeldOutEvaluation:
    def __init__(self, prompts: PromptSet, latent_shape: tuple[int, ...], decode: Callable[[Tensor], Tensor], trained_reward: Callable,
                 held_out_rewards: dict[str, Callable], seeds: int, out_dir: Path, device: torch.device, batch: int = 4):
        self.prompts, self.decode, self.out = prompts, decode, Path(out_dir) / "samples"
        self.seeds, self.device, self.batch = list(range(seeds)), device, batch
        self.rewards = {TRAINED: trained_reward, **held_out_rewards}
        self.jobs = [(i, s) for i in range(len(prompts)) for s in self.seeds]
        # each image's noise from its own seed: an image does not depend on which others share its batch
        self.noise = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for _, s in self.jobs])
        self.log = EvaluationLog(self.out / "evaluations.jsonl")
        # a resumed run: the alarm's history and the drift's baseline from its earlier start
        self.alarm = HackingAlarm(history=self.log.evaluations())
        self.first_images: Tensor | None = None  # the drift's baseline
        if self.alarm.history:
            self.first_images = torch.stack([load_image(f) for f in self._files(self.alarm.history[0].step)])

    def _files(self, step: int) -> list[Path]:
        return [self.out / f"step-{step:06d}" / image_name(i, s) for i, s in self.jobs]

    @torch.no_grad()
    def draw(self, generator: Callable, step: int) -> list[Path]:
        files = self._files(step)
        files[0].parent.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(self.jobs), self.batch):
            chunk = list(range(start, min(start + self.batch, len(self.jobs))))
            cond = self.prompts.batch([self.jobs[k][0] for k in chunk], self.device)
            images = self.decode(generator(self.noise[chunk].to(self.device), cond))
            for k, image in zip(chunk, images):
                save_png(((image.float().cpu() + 1) / 2), files[k])
        return files

    def __call__(self, generator: Callable, step: int) -> EvalOutcome:
        """Draw, score and measure at ``step``: scalars and the grid to log, the alarms raised."""
        was_training = getattr(generator, "training", False)
        if hasattr(generator, "eval"):
            generator.eval()
        try:
            files = self.draw(generator, step)
        finally:
            if was_training:
                generator.train()
        shape = (len(self.prompts), len(self.seeds))
        per_image = [self.prompts.prompts[i] for i, _ in self.jobs]
        result = score_images(files[0].parent, self.rewards, prompts=per_image)
        grids = {name: np.asarray(v).reshape(shape) for name, v in result.scores.items()}
        intervals = {name: mean_interval(v) for name, v in grids.items()}
        images = torch.stack([load_image(f) for f in files])
        diversity = seed_diversity(images.reshape(*shape, *images.shape[1:])) if len(self.seeds) > 1 else None
        self.first_images = images if self.first_images is None else self.first_images
        drift = drift_interval(images, self.first_images, shape)
        evaluation = evaluation_of(step, intervals, diversity, grids)
        alarms = self.alarm.add(evaluation)
        grid = image_grid({f"seed {s}": files[j::len(self.seeds)] for j, s in enumerate(self.seeds)}, self.prompts.prompts,
                          self.out / f"step-{step:06d}.png")
        self._record(evaluation, intervals, drift, alarms)
        scalars = {f"eval/{name}": iv.estimate for name, iv in intervals.items()}
        scalars.update({"eval/diversity": diversity or 0.0, "eval/drift": drift.estimate})
        return EvalOutcome(scalars, {"samples": read_rgb(grid)}, [a.message for a in alarms], best=self.alarm.best().step == step)

    def _record(self, evaluation: Evaluation, intervals: dict[str, Interval], drift: Interval, alarms: list[Alarm]) -> None:
        self.log.write({"evaluation": evaluation.__dict__, "intervals": {k: v.to_dict() for k, v in intervals.items()},
                        "drift": drift.to_dict(), "alarms": [a.__dict__ for a in alarms],
                        "best_step": self.alarm.best().step})

    def history(self) -> list[dict[str, Any]]:
        return self.log.records()
