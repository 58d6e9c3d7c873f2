"""Running the toy: several methods side by side, sweeps, and the files they write.

``run_toy`` prepares the stages once (reference, initial generator), aligns each method through
the one training loop, and writes to OUT:
    metrics.json             per method, and for p*, q_0, the reference (teacher) and the initial
                             generator: fraction past x > 0, mean reward, W1 and KL to p* and q_0,
                             mass in low-density regions, wall time
    samples_<method>.npy     eval_samples generator samples, shape (N,) in 1-D, (N, 2) in 2-D
    densities.png            each method's density against q_0 and p*
    pareto.png               with a sweep: reward against distance, with the exact frontier
    report.md                the table, the config and the commands
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from didr import config as cfgio
from didr.config import from_dict, to_dict
from didr.diffusion.mixture import GaussianMixture, TiltedDensity
from didr.errors import ConfigError
from didr.eval.toy_metrics import toy_metrics, w1_to_density
from didr.eval.toy_plots import plot_densities, plot_pareto
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
    # all methods in a few minutes on 2 CPU cores: fewer, larger steps
    "fast": {
        "toy": {"ref_steps": 2000, "ref_batch": 1024, "ref_lr": 1e-3, "distill_steps": 800, "distill_batch": 1024, "distill_lr": 1e-3},
        "train": {"steps": 600, "batch_size": 512, "ta_updates": 5, "lr_generator": 1e-3, "lr_ta": 1e-3},
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


def _row(samples: torch.Tensor, tilted: TiltedDensity, reward) -> dict:
    return {k: round(v, 5) for k, v in toy_metrics(samples, tilted, reward).items()}


def matched_optimum(samples: np.ndarray, mixture: GaussianMixture, reward, mean_reward: float) -> dict:
    """The exact optimum p*_b whose mean reward equals the samples' (bisection on log b), and the
    samples' W1 to it: the distance to the optimum at equal reward."""
    lo, hi = -6.0, 6.0  # log beta
    base = TiltedDensity(mixture, reward, 1.0)
    if mean_reward <= float((base.ref_density * base.rewards).sum() * base.cell):
        beta = float("inf")
        target = base.ref_density / (base.ref_density.sum() * base.cell)
        return {"matched_beta": beta, "w1_to_matched_pstar": w1_to_density(samples.reshape(len(samples), -1), base, target.numpy())}
    for _ in range(40):
        mid = (lo + hi) / 2
        if TiltedDensity(mixture, reward, float(np.exp(mid))).mean_reward() > mean_reward:
            lo = mid  # reward too high: the temperature must rise
        else:
            hi = mid
    beta = float(np.exp((lo + hi) / 2))
    tilted = TiltedDensity(mixture, reward, beta)
    w1 = w1_to_density(samples.reshape(len(samples), -1), tilted, tilted.density.numpy())
    return {"matched_beta": round(beta, 5), "w1_to_matched_pstar": round(w1, 5)}


def exact_frontier(mixture: GaussianMixture, reward, n: int = 40) -> dict[str, list[float]]:
    """Mean reward and KL(p*_b || q_0) along the exact optimum family (M6)."""
    out: dict[str, list[float]] = {"beta": [], "mean_reward": [], "kl_to_q0": []}
    for beta in np.geomspace(0.05, 50, n):
        td = TiltedDensity(mixture, reward, float(beta))
        p, q = td.density, td.ref_density
        mask = p > 1e-300
        kl = float((p[mask] * (p[mask].log() - q[mask].clamp_min(1e-300).log())).sum() * td.cell)
        out["beta"].append(float(beta))
        out["mean_reward"].append(td.mean_reward())
        out["kl_to_q0"].append(kl)
    return out


def _save_samples(out_dir: Path, label: str, x: torch.Tensor) -> None:
    arr = x.numpy()
    arr = arr[:, 0] if arr.shape[1] == 1 else arr
    np.save(out_dir / f"samples_{label.replace(':', '_').replace('=', '-')}.npy", arr.astype(np.float32))


def run_toy(
    cfg: RunConfig,
    methods: list[str],
    out_dir: Path,
    *,
    sweep_beta: list[float] | None = None,
    sweep_alpha: list[float] | None = None,
) -> dict:
    toy, seed = cfg.toy, cfg.train.seed
    parsed = [parse_method(m, cfg.method) for m in methods]  # refuse bad specs before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    reward = parse_toy_reward(toy.reward)
    tilted = TiltedDensity(toy.mixture(), reward, cfg.method.beta)
    t0 = time.perf_counter()
    stages = prepare_stages(toy, seed, out_dir / "stages", progress=cfg.train.progress)
    n, dim = toy.eval_samples, stages.mixture.dim
    gen = torch.Generator().manual_seed(seed + 7)
    results: dict = {
        "pstar": {**_row(tilted.sample(n, gen).float(), tilted, reward), "exact": _exact(tilted)},
        "q0": _row(stages.mixture.sample(n, gen).float(), tilted, reward),
        "reference_teacher": _row(stages.teacher_samples, tilted, reward),
        "initial_generator": _row(generate(stages.generator, n, dim, seed + 5), tilted, reward),
    }
    results["stages_seconds"] = round(time.perf_counter() - t0, 2)
    samples: dict[str, np.ndarray] = {}
    for label, method in parsed:
        x, row = _run_one(stages, method, cfg, reward, tilted, n, dim, seed, label)
        results[label] = row
        samples[label] = x.numpy()
        _save_samples(out_dir, label, x)
    sweep = _sweep(stages, cfg, reward, n, dim, seed, sweep_beta, sweep_alpha) if sweep_beta or sweep_alpha else None
    report = {"config": to_dict(cfg), "methods": [label for label, _ in parsed], "results": results}
    if sweep:
        report["sweep"] = sweep
        plot_pareto(sweep, exact_frontier(stages.mixture, reward), out_dir / "pareto.png")
    if samples:
        plot_densities(samples, tilted, out_dir / "densities.png", title=f"reward {toy.reward}, beta {cfg.method.beta:g}")
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(render_report(report))
    return report


def _exact(tilted: TiltedDensity) -> dict:
    from didr.eval.toy_metrics import exact_metrics

    return {k: round(v, 5) for k, v in exact_metrics(tilted).items()}


def _run_one(stages, method: MethodConfig, cfg: RunConfig, reward, tilted, n, dim, seed, label, out_dir=None):
    t0 = time.perf_counter()
    g = align(stages, method, cfg.train, reward, out_dir, desc=label)
    seconds = time.perf_counter() - t0
    x = generate(g, n, dim, seed + 5)
    return x, {**_row(x, tilted, reward), "train_seconds": round(seconds, 2)}


def _sweep(stages, cfg: RunConfig, reward, n, dim, seed, betas, alphas) -> list[dict]:
    """DIDR over temperatures beta, DI++ over endpoint weights alpha: each point's reward, KL to
    q_0 and W1 to the exact optimum with the same mean reward."""
    runs = [("didr", f"beta={b:g}", replace(cfg.method, name="didr", beta=b)) for b in betas or []]
    runs += [("dipp", f"alpha={a:g}", replace(cfg.method, name="dipp", alpha=a)) for a in alphas or []]
    points = []
    for method, label, mcfg in runs:
        tilted = TiltedDensity(stages.mixture, reward, mcfg.beta)
        x, row = _run_one(stages, mcfg, cfg, reward, tilted, n, dim, seed, f"{method} {label}")
        point = {"method": method, "label": label, **row, **matched_optimum(x.numpy(), stages.mixture, reward, row["mean_reward"])}
        points.append(point)
    return points


def train_toy(cfg: RunConfig, out_dir: Path) -> dict:
    """``didr train`` on the toy: the single method of ``cfg.method``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reward = parse_toy_reward(cfg.toy.reward)
    tilted = TiltedDensity(cfg.toy.mixture(), reward, cfg.method.beta)
    stages = prepare_stages(cfg.toy, cfg.train.seed, out_dir / "stages", progress=cfg.train.progress)
    n, dim = cfg.toy.eval_samples, stages.mixture.dim
    x, row = _run_one(stages, cfg.method, cfg, reward, tilted, n, dim, cfg.train.seed, cfg.method.name, out_dir)
    result = {cfg.method.name: row, "pstar": _exact(tilted)}
    if is_main_process():
        _save_samples(out_dir, cfg.method.name, x)
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


FIGURES = [
    ("frac_positive", "frac x>0"),
    ("mean_reward", "mean r"),
    ("w1_to_pstar", "W1 to p*"),
    ("kl_to_pstar", "KL to p*"),
    ("w1_to_q0", "W1 to q0"),
    ("low_density_mass", "low-density mass"),
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
        f"batch {cfg['train']['batch_size']}, seed {cfg['train']['seed']}.",
        "",
        f"Exact optimum p*: fraction past x > 0 = {exact['frac_positive']:.4f}, mean reward = {exact['mean_reward']:.4f}.",
        "The p* and q0 rows use exact samples: their W1 and KL are the sampling/KDE floor.",
        "",
        "| row | " + " | ".join(h for _, h in FIGURES) + " | seconds |",
        "|---|" + "---|" * (len(FIGURES) + 1),
    ]
    rows = ["pstar", "q0", "reference_teacher", "initial_generator", *report["methods"]]
    for name in rows:
        r = res[name]
        secs = r.get("train_seconds", "")
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.4f}" for k, _ in FIGURES) + f" | {secs} |")
    for name in report["methods"]:
        if name.startswith("didr"):
            r = res[name]
            ok_frac = abs(r["frac_positive"] - exact["frac_positive"]) <= 0.05
            ok_w1 = r["w1_to_pstar"] <= 0.2
            lines += ["", f"`{name}`: |frac - exact| = {abs(r['frac_positive'] - exact['frac_positive']):.4f} "
                      f"({'<=' if ok_frac else '>'} 0.05), W1 to p* = {r['w1_to_pstar']:.4f} ({'<=' if ok_w1 else '>'} 0.2)."]
    if "sweep" in report:
        lines += ["", "## Sweep", "", "| method | setting | mean r | KL to q0 | W1 to p* (own beta) | matched beta | W1 to matched p* |", "|---|---|---|---|---|---|---|"]
        for p in report["sweep"]:
            lines.append(
                f"| {p['method']} | {p['label']} | {p['mean_reward']:.4f} | {p['kl_to_q0']:.4f} | {p['w1_to_pstar']:.4f} | "
                f"{p['matched_beta']} | {p['w1_to_matched_pstar']:.4f} |"
            )
        lines += ["", "![pareto](pareto.png)"]
    lines += ["", "![densities](densities.png)", ""]
    return "\n".join(lines)
