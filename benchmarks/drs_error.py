"""DRS estimator error against the exact DRS, by noise level, on a Gaussian-mixture reference.

    python benchmarks/drs_error.py                      # defaults below, a few minutes on 2 CPU cores
    python benchmarks/drs_error.py --beta 0.3 --n-xt 256

The reference is the exact MixtureDenoiser of a 1-D mixture (default: means -2, 2, stds 0.5,
weights 0.5 / 0.5), so only the estimators' own error shows, never a network's. For each t, x_t is
drawn from the noised *reference* marginal q_t (M1), and every estimator is compared with
ExactMixtureDRS (M9 by Gauss-Hermite quadrature):

- DRP (M12) with k = 1, 2, 4, 8 DDIM steps;
- Monte-Carlo (M9) with N = 64 and 1024 posterior samples from the ancestral sampler at the
  library default of 10 sampler steps, and N = 1024 with 100 steps (separates the sampler's
  discretisation bias from the sampling noise);
- hybrid: DRP k = 1 at t <= --t-switch, Monte-Carlo N = 1024 (10 steps) above.

Metrics: relative RMSE ||est - exact|| / ||exact|| over the x_t at one t, and the relative error of
the mean DRS over those x_t, ||mean(est) - mean(exact)|| / ||mean(exact)||. Writes
benchmarks/results/drs_error.md (tables, command, machine, date) and benchmarks/results/drs_error.png.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.schedules import VPCosineSchedule
from didr.eval.report import Provenance
from didr.objectives.drs import DRPEstimator, ExactMixtureDRS, HybridDRS, MonteCarloDRS
from didr.rewards.toy import parse_toy_reward

RESULTS = Path(__file__).resolve().parent / "results"


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--means", type=floats, default=[-2.0, 2.0], help="component means (1-D), comma-separated")
    p.add_argument("--stds", type=floats, default=[0.5, 0.5], help="component stds, comma-separated")
    p.add_argument("--weights", type=floats, default=[0.5, 0.5], help="component weights, comma-separated")
    p.add_argument("--reward", default="sigmoid:4", help="toy reward, name[:param]")
    p.add_argument("--beta", type=float, default=0.72, help="temperature beta of (M6)")
    p.add_argument("--times", type=floats, default=[0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95],
                   help="noise levels t in (0, 1) of the VP cosine schedule")
    p.add_argument("--n-xt", type=int, default=256, help="x_t drawn from q_t per noise level")
    p.add_argument("--t-switch", type=float, default=0.2, help="hybrid: DRP at t <= t_switch, Monte-Carlo above")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, pinned so timings compare")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for drs_error.md / drs_error.png")
    return p.parse_args(argv)


def estimators(reward, beta, t_switch, seed):
    mc = lambda n, steps: MonteCarloDRS(reward, beta, samples=n, sampler_steps=steps, seed=seed)  # noqa: E731
    table = {f"DRP k={k}": DRPEstimator(reward, beta, steps=k) for k in (1, 2, 4, 8)}
    table["MC N=64"] = mc(64, 10)
    table["MC N=1024"] = mc(1024, 10)
    table["MC N=1024, 100 steps"] = mc(1024, 100)
    table[f"hybrid (t_sw={t_switch:g})"] = HybridDRS(DRPEstimator(reward, beta, steps=1), mc(1024, 10), t_switch)
    return table


def run(args):
    torch.manual_seed(args.seed)
    mix = GaussianMixture(args.means, args.stds, args.weights)
    schedule = VPCosineSchedule()
    ref = MixtureDenoiser(mix, schedule)
    reward = parse_toy_reward(args.reward)
    exact_est = ExactMixtureDRS(mix, reward, args.beta)
    table = estimators(reward, args.beta, args.t_switch, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    rmse = {name: [] for name in table}
    mean_err = {name: [] for name in table}
    seconds = {name: 0.0 for name in table}
    exact_mean = []
    for t0 in args.times:
        t = torch.full((args.n_xt,), t0)
        x0 = mix.sample(args.n_xt, generator=g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        x_t = schedule.add_noise(x0, t.double(), eps).float()
        exact = exact_est(ref, x_t, t).drs.double()
        exact_mean.append(float(exact.mean()))
        for name, est in table.items():
            start = time.perf_counter()
            drs = est(ref, x_t, t).drs.double()
            seconds[name] += time.perf_counter() - start
            rmse[name].append(float((drs - exact).norm() / exact.norm()))
            mean_err[name].append(float((drs.mean(0) - exact.mean(0)).norm() / exact.mean(0).norm()))
        print(f"t={t0:.2f}  " + "  ".join(f"{n}: {rmse[n][-1]:.3g}" for n in table), flush=True)
    per_xt_ms = {n: 1e3 * s / (args.n_xt * len(args.times)) for n, s in seconds.items()}
    return rmse, mean_err, exact_mean, per_xt_ms


def markdown(args, rmse, mean_err, exact_mean, per_xt_ms, command):
    names = list(rmse)
    head = "| t | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"

    def rows(metric):
        return "".join(f"| {t:.2f} | " + " | ".join(f"{metric[n][i]:.3g}" for n in names) + " |\n"
                       for i, t in enumerate(args.times))

    mean_head = "| t | exact mean DRS | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
    mean_rows = "".join(f"| {t:.2f} | {exact_mean[i]:.3g} | " + " | ".join(f"{mean_err[n][i]:.3g}" for n in names)
                        + " |\n" for i, t in enumerate(args.times))
    timing = "| estimator | ms per x_t |\n|---|---|\n" + "".join(f"| {n} | {per_xt_ms[n]:.3g} |\n" for n in names)
    provenance = "\n".join(Provenance.here(command, f"load average at the end {os.getloadavg()[0]:.1f} "
                                                     "(shared machine: the cost table is indicative only)").lines())
    return f"""# DRS estimator error against the exact DRS

Reference: 1-D Gaussian mixture, means {args.means}, stds {args.stds}, weights {args.weights}, exact
posterior-mean denoiser (no network error). Reward `{args.reward}`, beta = {args.beta}, VP cosine
schedule. {args.n_xt} x_t per noise level, drawn from the noised reference marginal q_t. Ground truth:
ExactMixtureDRS (M9, Gauss-Hermite quadrature per posterior component). Monte-Carlo draws its
posterior samples with the ancestral sampler, 10 steps (the library default) unless stated.

{provenance}

## Relative RMSE, ||est - exact|| / ||exact|| over x_t

{head}{rows(rmse)}
## Relative error of the mean DRS over x_t, ||mean(est) - mean(exact)|| / ||mean(exact)||

{mean_head}{mean_rows}
## Cost

{timing}
![error vs t](drs_error.png)
"""


def plot(args, rmse, mean_err, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for name in rmse:
        style = "-o" if name.startswith("DRP") else ("--s" if name.startswith("MC") else ":^")
        axes[0].plot(args.times, rmse[name], style, ms=4, label=name)
        axes[1].plot(args.times, mean_err[name], style, ms=4, label=name)
    for ax, title in zip(axes, ["relative RMSE over x_t", "relative error of the mean DRS"]):
        ax.set_yscale("log")
        ax.set_xlabel("t (VP cosine)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("error vs exact DRS")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"DRS estimators vs exact: reward {args.reward}, beta {args.beta}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # pinned so that recorded timings are comparable between runs
    command = "python benchmarks/drs_error.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    rmse, mean_err, exact_mean, per_xt_ms = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drs_error.md").write_text(markdown(args, rmse, mean_err, exact_mean, per_xt_ms, command))
    plot(args, rmse, mean_err, args.out / "drs_error.png")
    print(f"wrote {args.out / 'drs_error.md'} and {args.out / 'drs_error.png'}")


if __name__ == "__main__":
    main()
