"""``didr toy``: the paper's toy experiment with exact answers (docs/method.md §5).

    didr toy --out runs/toy                                   # the fast preset, all methods, one seed
    didr toy --means=-2,2 --stds=0.5,0.5 --weights=0.5,0.5 --reward sigmoid:4 --beta 0.72 \\
             --methods didr,dipp,di,refl --preset paper --seed 0 --out runs/toy-paper
    didr toy --reference exact --out runs/toy-exact           # analytic reference score
    didr toy --mixture configs/mixtures/ring8-thin-8d.yaml --reward linear:1,0,0.5,0.5,0.5,0.5,0.5,0.5 --out runs/ring8d

Frontiers: every method over its strength, 3 seeds, compared at equal reward (docs/method.md §7):

    didr toy --frontier --jobs 2 --out runs/frontier          # DIDR, DI++, ReFL
    didr toy --frontier --preset smoke --jobs 2 --out runs/smoke
    didr toy --frontier --methods didr,didr:drp_steps=1,dipp --strengths dipp=0.05,0.1,0.2 --seeds 5 --out DIR
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import torch

from didr import config as cfgio
from didr.diffusion.mixture import read_mixture_file
from didr.errors import ConfigError
from didr.experiments.config import RunConfig
from didr.experiments.toy.frontier import run_frontier
from didr.experiments.toy.presets import apply_preset
from didr.experiments.toy.report import calibration_lines
from didr.experiments.toy.run import run_toy
from didr.objectives.config import parse_method_spec

DEFAULT_METHODS = "didr,dipp,di,refl"
FRONTIER_METHODS = "didr,dipp,refl"  # dmdr has no default grid checked to overlap DIDR's rewards


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def build_config(args: argparse.Namespace):
    """The RunConfig for ``didr toy``: a YAML file (optional), the preset, then the flags."""
    data = cfgio.read_yaml(args.config) if args.config else {}
    toy = data.setdefault("toy", {})
    if args.mixture is not None:
        toy["means"], toy["stds"], toy["weights"] = read_mixture_file(args.mixture)
    if args.means is not None:
        toy["means"] = _floats(args.means, "--means")
    if args.stds is not None:
        toy["stds"] = _floats(args.stds, "--stds")
    if args.weights is not None:
        toy["weights"] = _floats(args.weights, "--weights")
    for flag in ("reward", "reference", "ring", "schedule"):
        if getattr(args, flag) is not None:
            toy[flag] = getattr(args, flag)
    if args.beta is not None:
        data.setdefault("method", {})["beta"] = args.beta
    if args.drs is not None:
        data.setdefault("method", {})["drs"] = args.drs
    if args.seed is not None:
        data.setdefault("train", {})["seed"] = args.seed
    if args.quiet:
        data.setdefault("train", {})["progress"] = False
    data = cfgio.apply_overrides(apply_preset(data, args.preset), args.set or [])
    return cfgio.from_dict(RunConfig, data)


def _strengths(items: list[str] | None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for item in items or []:
        label, sep, values = item.rpartition("=")
        if not sep or not label:
            raise ConfigError(f"--strengths {item!r}: expected METHOD=v1,v2,... (e.g. dipp=0.05,0.1,0.2)")
        out[label] = _floats(values, f"--strengths {label}")
        if not out[label]:
            raise ConfigError(f"--strengths {label}: no values")
    return out


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)  # every field checked before anything is written
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in (args.methods or (FRONTIER_METHODS if args.frontier else DEFAULT_METHODS)).split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods: name at least one method")
    if args.frontier:
        return _run_frontier(args, cfg, methods)
    for flag in ("seeds", "jobs", "strengths"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag} is for frontiers: add --frontier")
    report = run_toy(cfg, methods, Path(args.out), command=_command(args))
    _print_summary(report, Path(args.out))
    return 0


def _command(args: argparse.Namespace) -> str:
    return "didr " + shlex.join(getattr(args, "argv", None) or ["toy", "--out", args.out])


def _run_frontier(args: argparse.Namespace, cfg, methods: list[str]) -> int:
    specs = [parse_method_spec(m, cfg.method) for m in methods]
    seeds_n = 3 if args.seeds is None else args.seeds
    if seeds_n < 2:
        raise ConfigError(f"--seeds: intervals need at least 2 seeds, got {seeds_n}")
    jobs = 1 if args.jobs is None else args.jobs
    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    seeds = [cfg.train.seed + i for i in range(seeds_n)]
    report = run_frontier(cfg, specs, Path(args.out), seeds=seeds, strengths=_strengths(args.strengths), jobs=jobs, command=_command(args))
    floor = report["floor"]
    print(f"exact optimum ({report['exact']['method']}): mean reward {report['exact']['mean_reward']:.4g} at beta {report['exact']['beta']:g}")
    print(f"initial generator off-data median {', '.join(f'{v:.2f}' for v in floor['initial_off_data_median'])} stds "
          f"(exact {sum(floor['exact_off_data_median']) / len(seeds):.2f}): floor criterion {'met' if floor['met'] else 'NOT met'}")
    for c in report["comparisons"]:
        print("- " + c["summary"])
    print(f"wrote {Path(args.out) / 'frontier.md'}, frontier.png, samples.png and frontier.json ({report['seconds']:.0f} s)")
    return 0


def _print_summary(report: dict, out: Path) -> None:
    res = report["results"]
    print(f"exact p* ({report['exact_method']}): mean reward {res['pstar']['exact']['mean_reward']:.3f}")
    print(f"{'row':<24}{'mean r':>9}{'frac>0':>8}{'off-data':>9}{'beta_eq':>9}{'W1 eq':>8}{'TV eq':>8}{'off eq':>8}")
    for name in ["pstar", "q0", "reference_teacher", "initial_generator", *report["methods"]]:
        r = res[name]
        print(f"{name:<24}{r['mean_reward']:>9.3f}{r['frac_positive']:>8.3f}{r['off_data_median']:>9.2f}{r['beta_equal']:>9.3g}"
              f"{r['w1_equal']:>8.3f}{r['mode_tv_equal']:>8.3f}{r['off_data_equal']:>+8.2f}")
    for line in calibration_lines(report):
        print(line)
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")


def register(sub) -> None:
    p = sub.add_parser("toy", help="the toy experiment: methods against the exact optimum", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="optional YAML run config to start from (e.g. configs/toy.yaml)")
    p.add_argument("--mixture", help="YAML/JSON file with means (K lists of d numbers), stds (K) and weights (K)")
    p.add_argument("--means", help="1-D mixture means, comma-separated (default -2,2)")
    p.add_argument("--stds", help="mixture standard deviations (default 0.5,0.5)")
    p.add_argument("--weights", help="mixture weights, summing to 1 (default 0.5,0.5)")
    p.add_argument("--ring", type=int, help="use a 2-D ring of this many modes instead")
    p.add_argument("--reward", help="sigmoid:K[:w1,...,wd] | linear:C | linear:w1,...,wd | step (default sigmoid:4)")
    p.add_argument("--beta", type=float, help="DIDR temperature (default 0.72)")
    p.add_argument("--drs", help="DIDR's DRS estimator: drp | mc | hybrid | exact")
    p.add_argument("--methods", help=f"comma-separated, each NAME or NAME:field=value:... (default {DEFAULT_METHODS}; "
                                     f"with --frontier {FRONTIER_METHODS})")
    p.add_argument("--preset", default="fast", help="fast (minutes on a laptop CPU) | smoke (a quick check) | paper (the appendix schedule)")
    p.add_argument("--reference", help="trained (default) | exact (the mixture's analytic score)")
    p.add_argument("--schedule", help="vp-cosine (default) | flow | ve")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--frontier", action="store_true", help="sweep each method over its strength with several seeds and compare at equal reward")
    p.add_argument("--seeds", type=int, help="frontier: number of seeds, from --seed on (default 3)")
    p.add_argument("--jobs", type=int, help="frontier: runs in parallel, one process of one torch thread each (default 1)")
    p.add_argument("--strengths", action="append", metavar="METHOD=V1,V2,...",
                   help="frontier: a method's grid of its strength (didr: beta, dipp / dmdr: alpha, refl: refl_reg); repeatable")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest when other work shares the cores)")
    p.set_defaults(func=run)
