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

import itertools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from didr.eval.alarm import Alarm, Evaluation, HackingAlarm
from didr.eval.evaluate import pixel_drift
from didr.eval.generators import image_name, save_png
from didr.eval.plots import image_grid
from didr.eval.score import load_image, score_images
from didr.eval.stats import Interval, mean_interval
from didr.files import atomic_write_text
from didr.models.text import PromptSet
from didr.train.evaluation import EvalOutcome

TRAINED = "trained"


class HeldOutEvaluation:
    def __init__(self, prompts: PromptSet, latent_shape: tuple[int, ...], decode: Callable[[Tensor], Tensor], trained_reward: Callable,
                 held_out_rewards: dict[str, Callable], seeds: int, out_dir: Path, device: torch.device, batch: int = 4):
        self.prompts, self.decode, self.out = prompts, decode, Path(out_dir) / "samples"
        self.seeds, self.device, self.batch = list(range(seeds)), device, batch
        self.rewards = {TRAINED: trained_reward, **held_out_rewards}
        self.jobs = [(i, s) for i in range(len(prompts)) for s in self.seeds]
        # each image's noise from its own seed: an image does not depend on which others share its batch
        self.noise = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for _, s in self.jobs])
        self.alarm = HackingAlarm()
        self.first_files: list[Path] | None = None
        self._reload()

    def _reload(self) -> None:
        """The evaluations of an earlier start of the run (a resume): the alarm's history and the drift's baseline."""
        log = self.out / "evaluations.jsonl"
        for line in log.read_text().splitlines() if log.is_file() else []:
            self.alarm.history.append(Evaluation(**json.loads(line)["evaluation"]))
        if self.alarm.history:
            self.first_files = self._files(self.alarm.history[0].step)

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
        intervals = {name: mean_interval(np.asarray(v).reshape(shape)) for name, v in result.scores.items()}
        diversity = seed_diversity(files, shape) if len(self.seeds) > 1 else None
        self.first_files = self.first_files or files
        drift = pixel_drift(files, self.first_files, shape)
        evaluation = Evaluation(step, intervals[TRAINED].estimate, _half(intervals[TRAINED]),
                                {k: v.estimate for k, v in intervals.items() if k != TRAINED},
                                {k: _half(v) for k, v in intervals.items() if k != TRAINED}, diversity)
        alarms = self.alarm.add(evaluation)
        grid = image_grid({f"seed {s}": files[j::len(self.seeds)] for j, s in enumerate(self.seeds)}, self.prompts.prompts,
                          self.out / f"step-{step:06d}.png")
        self._record(evaluation, intervals, drift, alarms)
        scalars = {f"eval/{name}": iv.estimate for name, iv in intervals.items()}
        scalars.update({"eval/diversity": diversity or 0.0, "eval/drift": drift.estimate if drift is not None else 0.0})
        return EvalOutcome(scalars, {"samples": _read_rgb(grid)}, [a.message for a in alarms], best=self.alarm.best().step == step)

    def _record(self, evaluation: Evaluation, intervals: dict[str, Interval], drift: Interval | None, alarms: list[Alarm]) -> None:
        record = {"evaluation": evaluation.__dict__, "intervals": {k: v.to_dict() for k, v in intervals.items()},
                  "drift": drift.to_dict() if drift is not None else None, "alarms": [a.__dict__ for a in alarms],
                  "best_step": self.alarm.best().step}
        log = self.out / "evaluations.jsonl"
        previous = log.read_text() if log.is_file() else ""
        kept = "".join(line + "\n" for line in previous.splitlines() if json.loads(line)["evaluation"]["step"] < evaluation.step)
        atomic_write_text(kept + json.dumps(record) + "\n", log)

    def history(self) -> list[dict[str, Any]]:
        log = self.out / "evaluations.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def seed_diversity(files: list[Path], shape: tuple[int, int]) -> float:
    """Mean over prompts of the RMS pixel distance (images in [-1, 1]) between pairs of its seeds' images."""
    prompts, seeds = shape
    per_prompt = []
    for p in range(prompts):
        images = [load_image(files[p * seeds + s]) for s in range(seeds)]
        pairs = [float(((a - b) ** 2).mean().sqrt()) for a, b in itertools.combinations(images, 2)]
        per_prompt.append(np.mean(pairs))
    return float(np.mean(per_prompt))


def _half(interval: Interval) -> float:
    return (interval.high - interval.low) / 2


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
