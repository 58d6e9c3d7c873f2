"""Monte-Carlo DRS against DRP on MNIST, on the same points: what few posterior samples and few
ancestral steps cost in bias, and what each estimator costs in time.

    python benchmarks/mnist_drs.py --bench-dir runs/mnist --out benchmarks/results/mnist_drs.md

Uses the cached stages of a ``didr bench mnist`` run (reference, reward, initial generator). Points
x_t = a x_0 + s eps with x_0 from the initial one-step generator, at several noise levels t. On MNIST
there is no exact DRS, so the yardstick is Monte-Carlo DRS (M9) with many samples and steps
(``--ref-samples`` x ``--ref-steps``); each estimator is scored by its cosine similarity to it and
its norm ratio (< 1: shrunk towards zero), averaged over the points, with the yardstick's own
split-half agreement as the noise floor.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from didr.eval.report import Provenance
from didr.experiments.digits.bench import preset
from didr.experiments.digits.stages import prepare_stages
from didr.objectives.drs import DRPEstimator, MonteCarloDRS


def flat_cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def norm_ratio(a, b):
    return a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-dir", required=True, help="output directory of a `didr bench mnist` run (its stages are reused)")
    p.add_argument("--out", required=True)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--points", type=int, default=8, help="points per noise level")
    p.add_argument("--times", default="0.2,0.4,0.6,0.8")
    p.add_argument("--ref-samples", type=int, default=128)
    p.add_argument("--ref-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="the stages of `didr bench mnist --fast` (a smoke test)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("mnist", fast=args.fast)
    stages = prepare_stages(cfg.digits, cfg.train.seed, Path(args.bench_dir) / "stages", progress=False)
    ref, reward = stages.reference, stages.reward
    estimators = {"DRP k=1": DRPEstimator(reward, args.beta, 1), "DRP k=2": DRPEstimator(reward, args.beta, 2)}
    for n, k in ((8, 2), (8, 8), (32, 2), (32, 8)):
        estimators[f"MC {n}x{k}"] = MonteCarloDRS(reward, args.beta, n, k, seed=1)
    half = args.ref_samples // 2
    yard_a, yard_b = MonteCarloDRS(reward, args.beta, half, args.ref_steps, seed=2), MonteCarloDRS(reward, args.beta, half, args.ref_steps, seed=3)
    lines = [f"# Monte-Carlo DRS against DRP on MNIST (beta = {args.beta:g})", "",
             *Provenance.here(f"python benchmarks/mnist_drs.py --bench-dir DIR --out {args.out}",
                              "the stages of `didr bench mnist`; other jobs shared the cores").lines(), "",
             f"Yardstick: Monte-Carlo DRS with {args.ref_samples} posterior samples x {args.ref_steps} ancestral steps (two independent halves; "
             "their agreement is the noise floor). Each cell: mean over the points of the cosine similarity to the yardstick / norm ratio "
             f"(< 1: shrunk towards zero). {args.points} points per noise level; seconds per call at that batch.", "",
             "| estimator | " + " | ".join(f"t = {t}" for t in args.times.split(",")) + " | seconds / call |", "|---|" + "---|" * (len(args.times.split(",")) + 1)]
    z, c = stages.inputs(args.points, seed=7)
    with torch.no_grad():
        x0 = stages.generator(z, c)
    results: dict[str, list[str]] = {name: [] for name in ["yardstick halves", *estimators]}
    seconds: dict[str, float] = {name: 0.0 for name in results}
    for t_value in (float(t) for t in args.times.split(",")):
        t = torch.full((args.points,), t_value)
        x_t = stages.schedule.add_noise(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(t_value * 100))))
        start = time.perf_counter()
        a, b = yard_a(ref, x_t, t, c).drs, yard_b(ref, x_t, t, c).drs
        seconds["yardstick halves"] += time.perf_counter() - start
        yard = (a + b) / 2
        results["yardstick halves"].append(f"{float(flat_cos(a, b).mean()):.2f} / {float(norm_ratio(a, b).mean()):.2f}")
        for name, est in estimators.items():
            start = time.perf_counter()
            drs = est(ref, x_t, t, c).drs
            seconds[name] += time.perf_counter() - start
            results[name].append(f"{float(flat_cos(drs, yard).mean()):.2f} / {float(norm_ratio(drs, yard).mean()):.2f}")
        print(f"t = {t_value}: " + "; ".join(f"{k} {v[-1]}" for k, v in results.items()), flush=True)
    n_t = len(args.times.split(","))
    for name, cells in results.items():
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / n_t:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
