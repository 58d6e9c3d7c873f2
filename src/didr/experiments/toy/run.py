"""The toy at one seed: several methods side by side, and the files they write.

``run_toy`` prepares the stages once (reference, initial generator), aligns each method through
the one training loop, and writes to OUT:
    metrics.json             per method, and for exact samples of p*, q_0, the reference (teacher)
                             and the initial generator: mean reward, fraction past the reward's
                             boundary, median off-data distance, distances to p* at the configured
                             beta and at equal reward (see didr.eval.toy_metrics), wall time
    samples_<method>.npy     eval_samples generator samples, shape (N, d)
    densities.png            each method's samples against q_0 and p*
    report.md                the table, the setup, and the command, machine and date
Frontiers over strengths and seeds are :mod:`didr.experiments.toy.frontier` (``didr toy --frontier``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from didr.config import to_dict
from didr.diffusion.optimum import exact_optimum
from didr.eval.report import Provenance
from didr.eval.toy_metrics import exact_figures, toy_metrics
from didr.eval.toy_plots import plot_samples
from didr.experiments.config import RunConfig
from didr.experiments.toy.report import render_report
from didr.experiments.toy.stages import align, generate, prepare_stages
from didr.files import atomic_write_text
from didr.objectives.config import MethodConfig, parse_method_spec
from didr.rewards.toy import parse_toy_reward
from didr.runtime import is_main_process


def _row(samples: torch.Tensor, optimum, reward, beta: float) -> dict:
    return {k: round(v, 5) for k, v in toy_metrics(samples, optimum, reward, beta).items()}


def _save_samples(out_dir: Path, label: str, x: torch.Tensor) -> None:
    arr = x.numpy().reshape(len(x), -1)
    np.save(out_dir / f"samples_{label.replace(':', '_').replace('=', '-')}.npy", arr.astype(np.float32))


def run_toy(cfg: RunConfig, methods: list[str], out_dir: Path, command: str = "") -> dict:
    """Every method of ``methods`` (specs such as ``didr:drs=exact``) at the config's seed."""
    toy, seed, beta = cfg.toy, cfg.train.seed, cfg.method.beta
    parsed = [parse_method_spec(m, cfg.method) for m in methods]  # refuse bad specs before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    reward = parse_toy_reward(toy.reward)
    optimum = exact_optimum(toy.mixture(), reward)
    t0 = time.perf_counter()
    stages = prepare_stages(toy, seed, out_dir / "stages", progress=cfg.train.progress)
    n, dim = toy.eval_samples, stages.mixture.dim
    gen = torch.Generator().manual_seed(seed + 7)
    results: dict = {
        "pstar": {**_row(optimum.sample(n, beta, gen), optimum, reward, beta), "exact": exact_figures(optimum, beta)},
        "q0": _row(stages.mixture.sample(n, gen), optimum, reward, beta),
        "reference_teacher": _row(stages.teacher_samples(), optimum, reward, beta),
        "initial_generator": _row(generate(stages.generator, n, dim, seed + 5), optimum, reward, beta),
    }
    results["stages_seconds"] = round(time.perf_counter() - t0, 2)
    samples: dict[str, np.ndarray] = {}
    for label, method in parsed:
        x, row = _run_one(stages, method, cfg, reward, optimum, label)
        results[label] = row
        samples[label] = x.numpy()
        _save_samples(out_dir, label, x)
    report = {"config": to_dict(cfg), "methods": [label for label, _ in parsed], "results": results, "exact_method": optimum.method,
              "provenance": Provenance.here(command or f"didr toy --out {out_dir}").to_dict()}
    if samples:
        plot_samples(samples, optimum, beta, out_dir / "densities.png", title=f"reward {toy.reward}, beta {beta:g}")
    atomic_write_text(json.dumps(report, indent=2), out_dir / "metrics.json")
    atomic_write_text(render_report(report), out_dir / "report.md")
    return report


def _run_one(stages, method: MethodConfig, cfg: RunConfig, reward, optimum, label: str, out_dir: Path | None = None):
    t0 = time.perf_counter()
    g = align(stages, method, cfg.train, reward, out_dir, desc=label)
    seconds = time.perf_counter() - t0
    x = generate(g, cfg.toy.eval_samples, stages.mixture.dim, cfg.train.seed + 5)
    return x, {**_row(x, optimum, reward, cfg.method.beta), "train_seconds": round(seconds, 2)}


def train_toy(cfg: RunConfig, out_dir: Path) -> dict:
    """``didr train`` on the toy: the single method of ``cfg.method``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reward = parse_toy_reward(cfg.toy.reward)
    optimum = exact_optimum(cfg.toy.mixture(), reward)
    stages = prepare_stages(cfg.toy, cfg.train.seed, out_dir / "stages", progress=cfg.train.progress)
    x, row = _run_one(stages, cfg.method, cfg, reward, optimum, cfg.method.name, out_dir)
    result = {cfg.method.name: row, "pstar": exact_figures(optimum, cfg.method.beta)}
    if is_main_process():
        _save_samples(out_dir, cfg.method.name, x)
        atomic_write_text(json.dumps(result, indent=2), out_dir / "metrics.json")
    return result
