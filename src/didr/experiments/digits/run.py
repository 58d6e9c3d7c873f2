"""``didr train`` on the digits: one method (``cfg.method``), evaluated and written to OUT; with
``train.eval_every``, evaluated during the run too, with the reward-hacking alarm (:mod:`didr.experiments.digits.watch`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from didr.eval.plots import save_grid
from didr.experiments.digits.evaluate import EVAL_SEED, Evaluator
from didr.experiments.digits.stages import align, generate, prepare_stages
from didr.experiments.digits.watch import DigitsWatch
from didr.files import atomic_write_text


def run_digits(cfg, out_dir: Path) -> dict:
    """Prepare (or load) the stages, align ``cfg.method``, and write samples.png and metrics.json."""
    torch.set_num_threads(cfg.digits.threads)
    stages = prepare_stages(cfg.digits, cfg.train.seed, out_dir / "stages", cfg.train.progress)
    watch = DigitsWatch(stages, out_dir, out_dir / "stages", cfg.train.seed) if cfg.train.eval_every else None
    generator = align(stages, cfg.method, cfg.train, out_dir, cfg.method.name, evaluate=watch)
    z, c = stages.inputs(cfg.digits.eval_samples, EVAL_SEED)
    samples = generate(generator, z, c)
    metrics = Evaluator(stages)(samples, c)
    save_grid(samples[:100], out_dir / "samples.png", title=cfg.method.name)
    atomic_write_text(json.dumps(metrics, indent=2), out_dir / "metrics.json")
    return metrics
