"""Does the default toy land on its own beta? DIDR at the configured beta, several seeds, under
training budgets: each run's mean reward against the exact optimum's at beta, and its beta'.

    python benchmarks/toy_calibration.py                          # the fast preset's DIDR, its budget and longer ones
    python benchmarks/toy_calibration.py --variant "exact DRS=method.drs=exact" --seeds 3

Each variant is the fast preset (``didr toy``'s default) with ``--set``-style overrides; every
variant runs DIDR alone at the preset's beta with seeds 0, 1, 2 (the stages of seed s are the
toy's, cached under RUNS). A variant *lands on its beta* when every seed's mean reward is within
``--tolerance`` (2%) of p*_beta's. Records results/toy_calibration.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from dataclasses import replace
from pathlib import Path

import torch

from didr import config as cfgio
from didr.diffusion.optimum import exact_optimum
from didr.eval import toy_metrics as tm
from didr.eval.report import Provenance, markdown_table, render
from didr.experiments.config import RunConfig
from didr.experiments.toy.presets import apply_preset
from didr.experiments.toy.stages import align, generate, prepare_stages
from didr.rewards.toy import parse_toy_reward

RESULTS = Path(__file__).parent / "results"
#: the fast preset as it is, then longer budgets and a TA that tracks the generator more closely
VARIANTS = {
    "fast preset (600 steps)": [],
    "1,200 steps": ["train.steps=1200"],
    "2,400 steps": ["train.steps=2400"],
    "10 TA updates per step": ["train.ta_updates=10"],
}


def run_variant(overrides: list[str], seeds: list[int], stage_dir: Path, log=print) -> tuple[list[dict], float]:
    """Each seed's figures, and p*_beta's mean reward for the variant's mixture and reward."""
    cfg = cfgio.from_dict(RunConfig, cfgio.apply_overrides(apply_preset({}, "fast"), [*overrides, "train.progress=false"]))
    reward = parse_toy_reward(cfg.toy.reward)
    optimum = exact_optimum(cfg.toy.mixture(), reward)
    target = optimum.mean_reward(cfg.method.beta)
    rows = []
    for seed in seeds:
        stages = prepare_stages(cfg.toy, seed, stage_dir, progress=False)
        t0 = time.perf_counter()
        generator = align(stages, cfg.method, replace(cfg.train, seed=seed), reward, desc=f"didr seed {seed}")
        seconds = time.perf_counter() - t0
        x = generate(generator, cfg.toy.eval_samples, stages.mixture.dim, seed + 5)
        r = tm.mean_reward(x, reward)
        row = {"seed": seed, "reward": r, "gap": r / target - 1, "beta_prime": optimum.fit_beta(r),
               "w1": tm.distances(x, optimum, cfg.method.beta)["w1"], "seconds": seconds}
        log(f"  seed {seed}: reward {r:.4f} ({100 * row['gap']:+.1f}% against p*'s {target:.4f}), beta' {row['beta_prime']:.3f}, "
            f"W1 to p*_beta {row['w1']:.3f}, {seconds:.0f} s")
        rows.append(row)
    return rows, target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", metavar="NAME=KEY=VALUE[,KEY=VALUE]", help="a variant of the fast preset (default: VARIANTS)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--runs", default="runs/toy-calibration")
    p.add_argument("--out", default=str(RESULTS / "toy_calibration.md"))
    p.add_argument("--append", action="store_true", help="add this invocation's table to --out as a further section (with its own command)")
    args = p.parse_args()
    torch.set_num_threads(1)
    variants = dict(VARIANTS)
    if args.variant:
        variants = {}
        for spec in args.variant:
            name, _, sets = spec.partition("=")
            variants[name] = [s for s in re.split(r",(?![^\[]*\])", sets) if s]  # commas inside [...] belong to a value
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    table, found = [], {}
    for name, overrides in variants.items():
        print(f"{name}:", flush=True)
        rows, target = run_variant(overrides, seeds, Path(args.runs) / "stages")
        found[name] = rows
        lands = all(abs(r["gap"]) <= args.tolerance for r in rows)
        mean_gap = sum(r["gap"] for r in rows) / len(rows)
        table.append([name, " ".join(f"`{o}`" for o in overrides) or "-", f"{target:.4f}", ", ".join(f"{100 * r['gap']:+.1f}%" for r in rows), f"{100 * mean_gap:+.1f}%",
                      ", ".join(f"{r['beta_prime']:.3g}" for r in rows), ", ".join(f"{r['w1']:.3f}" for r in rows),
                      f"{sum(r['seconds'] for r in rows) / len(rows):.0f}", "yes" if lands else "no"])
    cfg = cfgio.from_dict(RunConfig, apply_preset({}, "fast"))
    optimum = exact_optimum(cfg.toy.mixture(), parse_toy_reward(cfg.toy.reward))
    command = "python benchmarks/toy_calibration.py" + "".join(f" --variant {shlex.quote(n + '=' + ','.join(o))}" for n, o in variants.items()) \
        if args.variant else "python benchmarks/toy_calibration.py"
    prov = Provenance.here(command + f" --seeds {args.seeds}" + (" --append" if args.append else ""),
                           "one torch thread; other jobs shared the 2 cores, so the seconds are upper bounds")
    text = render("Does the default toy land on its own beta?", prov, [
        f"DIDR alone on `didr toy`'s default (two modes at ±2, std 0.5, reward {cfg.toy.reward}, beta {cfg.method.beta:g}, DRP k = "
        f"{cfg.method.drp_steps} on t <= {cfg.method.t_max:g}), fast preset with the overrides shown, seeds {', '.join(map(str, seeds))}. "
        f"p*_beta's mean reward is {optimum.mean_reward(cfg.method.beta):.4f} (a variant of the mixture or reward: its own, in the table). "
        f"Each seed's gap is its mean reward against it; beta' is the "
        f"temperature whose exact optimum has the run's mean reward; W1 is to p*_beta. A variant lands on its beta when every seed is within "
        f"{100 * args.tolerance:g}%. Seconds: the alignment alone, per run.",
        markdown_table(["variant", "overrides", "p*_beta's reward", "gap per seed", "mean gap", "beta' per seed", "W1 per seed", "seconds per run", "every seed within 2%"], table),
        f"Time: {time.perf_counter() - t0:.0f} s."])
    out = Path(args.out)
    if args.append and out.is_file():
        text = out.read_text().rstrip() + "\n\n## Further variants\n\n" + text.split("\n", 2)[2]  # this invocation's provenance and table
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
