"""Running the toy at one seed: several methods side by side, and the files they write.

``run_toy`` prepares the stages once (reference, initial generator), aligns each method through
the one training loop, and writes to OUT:
    metrics.json             per method, and for exact samples of p*, q_0, the reference (teacher)
                             and the initial generator: mean reward, fraction past the reward's
                             boundary, median off-data distance, distances to p* at the configured
                             beta and at equal reward (see didr.eval.toy_metrics), wall time
    samples_<method>.npy     eval_samples generator samples, shape (N, d)
    densities.png            each method's samples against q_0 and p*
    report.md                the table, the config and the commands
Frontiers over strengths and seeds are :mod:`didr.experiments.toy_frontier` (``didr toy --frontier``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from didr import config as cfgio
from didr.config import from_dict, to_dict
from didr.diffusion.optimum import exact_optimum
from didr.errors import ConfigError
from didr.eval.toy_metrics import exact_figures, toy_metrics
from didr.eval.toy_plots import plot_samples
from didr.experiments.config import RunConfig
from didr.experiments.toy import align, generate, prepare_stages
from didr.objectives.config import METHODS, MethodConfig
from didr.rewards.toy import parse_toy_reward
from didr.train.distributed import is_main_process

#: DRP's first-order bias grows with the noise level (benchmarks/results/drs_error.md); on the toy,
#: generator noise levels t <= 0.4 with k = 4 DRP steps remove it. Restricting omega(t) to a range
#: keeps (M10)'s minimiser p*: matching the noised marginals at any one t > 0 matches them at t = 0.
#: Every score-distillation method gets the same range, so they still differ only in the target.
TOY_METHOD = {"drs": "drp", "drp_steps": 4, "t_max": 0.4}

#: presets, as overrides of the RunConfig's sections
PRESETS: dict[str, dict] = {
    # the paper's appendix schedule (method.md §5)
    "paper": {
        "toy": {"ref_steps": 10000, "ref_batch": 2048, "ref_lr": 3e-4, "distill_steps": 3000, "distill_batch": 2048, "distill_lr": 1e-3},
        "train": {"steps": 6000, "batch_size": 2048, "ta_updates": 5, "lr_generator": 1e-4, "lr_ta": 3e-4},
        "method": TOY_METHOD,
    },
    # all methods in a few minutes on 2 CPU cores: fewer, larger steps. The distillation is long
    # enough (and its learning rate high enough) for the generator to draw modes of std 0.05, and
    # the generator's EMA removes the jitter that a constant learning rate leaves on such modes
    # (without it, DI alone spreads them to a median of 5 stds; benchmarks/results/toy_frontiers.md).
    "fast": {
        "toy": {"ref_steps": 2000, "ref_batch": 1024, "ref_lr": 1e-3, "distill_steps": 2000, "distill_batch": 1024, "distill_lr": 3e-3},
        "train": {"steps": 600, "batch_size": 512, "ta_updates": 5, "lr_generator": 1e-3, "lr_ta": 1e-3, "ema_decay": 0.99},
        "method": TOY_METHOD,
    },
    # a smoke test of the whole pipeline, frontiers included, in a few minutes: not for conclusions
    "smoke": {
        "toy": {"ref_steps": 600, "ref_batch": 512, "ref_lr": 1e-3, "distill_steps": 600, "distill_batch": 512, "distill_lr": 3e-3,
                "eval_samples": 4000},
        "train": {"steps": 150, "batch_size": 256, "ta_updates": 5, "lr_generator": 1e-3, "lr_ta": 1e-3, "ema_decay": 0.95},
        "method": TOY_METHOD,
    },
}


def apply_preset(data: dict, preset: str) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = copy.deepcopy(data)
    for section, values in PRESETS[preset].items():
        out.setdefault(section, {})
        for k, v in values.items():
            out[section].setdefault(k, v)
    return out


def parse_method(spec: str, base: MethodConfig) -> tuple[str, MethodConfig]:
    """``didr`` or ``didr:drs=exact:drp_steps=4`` -> (label, MethodConfig)."""
    name, *pairs = spec.split(":")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    fields = cfgio.apply_overrides(to_dict(base) | {"name": name}, pairs)
    return spec, from_dict(MethodConfig, fields, "method")


def _row(samples: torch.Tensor, optimum, reward, beta: float) -> dict:
    return {k: round(v, 5) for k, v in toy_metrics(samples, optimum, reward, beta).items()}


def _save_samples(out_dir: Path, label: str, x: torch.Tensor) -> None:
    arr = x.numpy().reshape(len(x), -1)
    np.save(out_dir / f"samples_{label.replace(':', '_').replace('=', '-')}.npy", arr.astype(np.float32))


def run_toy(cfg: RunConfig, methods: list[str], out_dir: Path) -> dict:
    toy, seed, beta = cfg.toy, cfg.train.seed, cfg.method.beta
    parsed = [parse_method(m, cfg.method) for m in methods]  # refuse bad specs before any work
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
        x, row = _run_one(stages, method, cfg, reward, optimum, n, dim, seed, label)
        results[label] = row
        samples[label] = x.numpy()
        _save_samples(out_dir, label, x)
    report = {"config": to_dict(cfg), "methods": [label for label, _ in parsed], "results": results, "exact_method": optimum.method}
    if samples:
        plot_samples(samples, optimum, beta, out_dir / "densities.png", title=f"reward {toy.reward}, beta {beta:g}")
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(render_report(report))
    return report


def _run_one(stages, method: MethodConfig, cfg: RunConfig, reward, optimum, n, dim, seed, label, out_dir=None):
    t0 = time.perf_counter()
    g = align(stages, method, cfg.train, reward, out_dir, desc=label)
    seconds = time.perf_counter() - t0
    x = generate(g, n, dim, seed + 5)
    return x, {**_row(x, optimum, reward, cfg.method.beta), "train_seconds": round(seconds, 2)}


def train_toy(cfg: RunConfig, out_dir: Path) -> dict:
    """``didr train`` on the toy: the single method of ``cfg.method``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reward = parse_toy_reward(cfg.toy.reward)
    optimum = exact_optimum(cfg.toy.mixture(), reward)
    stages = prepare_stages(cfg.toy, cfg.train.seed, out_dir / "stages", progress=cfg.train.progress)
    n, dim = cfg.toy.eval_samples, stages.mixture.dim
    x, row = _run_one(stages, cfg.method, cfg, reward, optimum, n, dim, cfg.train.seed, cfg.method.name, out_dir)
    result = {cfg.method.name: row, "pstar": exact_figures(optimum, cfg.method.beta)}
    if is_main_process():
        _save_samples(out_dir, cfg.method.name, x)
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


FIGURES = [
    ("mean_reward", "mean r"),
    ("frac_positive", "frac past boundary"),
    ("off_data_median", "off-data median (stds)"),
    ("w1_to_pstar", "W1 to p*(beta)"),
    ("beta_equal", "beta' (equal reward)"),
    ("w1_equal", "W1 to p*(beta')"),
    ("mode_tv_equal", "mode TV to p*(beta')"),
    ("off_data_equal", "off-data excess"),
]


def render_report(report: dict) -> str:
    res = report["results"]
    cfg = report["config"]
    exact = res["pstar"]["exact"]
    lines = [
        "# Toy experiment",
        "",
        f"Reward `{cfg['toy']['reward']}`, beta {cfg['method']['beta']:g}, reference `{cfg['toy']['reference']}`, "
        f"schedule `{cfg['toy']['schedule']}`, {cfg['train']['steps']} generator steps x {cfg['train']['ta_updates']} TA updates, "
        f"batch {cfg['train']['batch_size']}, seed {cfg['train']['seed']} (one seed: no intervals; `didr toy --frontier` gives them).",
        "",
        f"Exact optimum p* ({report['exact_method']}): mean reward {exact['mean_reward']:.4f}.",
        "The pstar row uses exact samples: its distances are the sampling floor. beta' is the temperature whose exact optimum "
        "has the row's mean reward; the last three columns are distances to that optimum (method.md §7).",
        "",
        "| row | " + " | ".join(h for _, h in FIGURES) + " | seconds |",
        "|---|" + "---|" * (len(FIGURES) + 1),
    ]
    for name in ["pstar", "q0", "reference_teacher", "initial_generator", *report["methods"]]:
        r = res[name]
        lines.append(f"| {name} | " + " | ".join(_cell(r[k]) for k, _ in FIGURES) + f" | {r.get('train_seconds', '')} |")
    lines += ["", "![samples](densities.png)", ""]
    return "\n".join(lines)


def _cell(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.4g}"
