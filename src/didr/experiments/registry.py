"""The experiments that ``didr train`` runs.

Each is a :class:`Experiment`: ``prepare(config, out_dir)`` builds and checks what can fail on the
user's input, writing nothing under ``out_dir``; ``run(config, out_dir, prepared)`` trains and
returns its final metrics. ``didr train`` writes ``OUT/config.yaml`` between the two, so a refused
run leaves OUT as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from didr.experiments.config import RunConfig
from didr.experiments.digits.run import run_digits
from didr.experiments.text_to_image import build, run_text_to_image
from didr.experiments.toy.run import train_toy


@dataclass(frozen=True)
class Experiment:
    run: Callable[[RunConfig, Path, Any], dict]
    prepare: Callable[[RunConfig, Path], Any] = lambda cfg, out_dir: None


EXPERIMENTS: dict[str, Experiment] = {
    "toy": Experiment(lambda cfg, out_dir, _: train_toy(cfg, out_dir)),
    "digits": Experiment(lambda cfg, out_dir, _: run_digits(cfg, out_dir)),
    "text-to-image": Experiment(run_text_to_image, lambda cfg, out_dir: build(cfg.backbone, out_dir, held_out=cfg.train.eval_every > 0)),
}
