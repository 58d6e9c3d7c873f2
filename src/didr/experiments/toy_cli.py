"""``didr toy``: the paper's toy experiment with exact answers (method.md §5).

    didr toy --out runs/toy                                   # the fast preset, all methods
    didr toy --means=-2,2 --stds=0.5,0.5 --weights=0.5,0.5 --reward sigmoid:4 --beta 0.72 \\
             --methods didr,dipp,di,refl --preset paper --seed 0 --out runs/toy-paper
    didr toy --reference exact --out runs/toy-exact           # analytic reference score
    didr toy --sweep-beta 0.25,0.5,1,2 --sweep-alpha 0.5,1,2,4 --out runs/toy-sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

from didr import config as cfgio
from didr.errors import ConfigError

DEFAULT_METHODS = "didr,dipp,di,refl"


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def build_config(args: argparse.Namespace):
    """The RunConfig for ``didr toy``: a YAML file (optional), the preset, then the flags."""
    from didr.experiments.config import RunConfig
    from didr.experiments.toy_run import apply_preset

    data = cfgio.read_yaml(args.config) if args.config else {}
    toy = data.setdefault("toy", {})
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


def run(args: argparse.Namespace) -> int:
    from didr.experiments.toy_run import run_toy

    cfg = build_config(args)  # every field checked before anything is written
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods: name at least one method")
    sweep_beta = _floats(args.sweep_beta, "--sweep-beta") if args.sweep_beta else None
    sweep_alpha = _floats(args.sweep_alpha, "--sweep-alpha") if args.sweep_alpha else None
    if sweep_beta and any(b <= 0 for b in sweep_beta):
        raise ConfigError(f"--sweep-beta: every beta must be > 0, got {sweep_beta}")
    if sweep_beta and not sweep_alpha:
        sweep_alpha = [0.5, 1.0, 2.0, 4.0]
    report = run_toy(cfg, methods, Path(args.out), sweep_beta=sweep_beta, sweep_alpha=sweep_alpha)
    _print_summary(report, Path(args.out))
    return 0


def _print_summary(report: dict, out: Path) -> None:
    res = report["results"]
    exact = res["pstar"]["exact"]
    print(f"exact p*: frac x>0 {exact['frac_positive']:.3f}, mean reward {exact['mean_reward']:.3f}")
    print(f"{'row':<24}{'frac x>0':>10}{'mean r':>9}{'W1 p*':>9}{'KL p*':>9}{'low-dens':>10}")
    for name in ["q0", "reference_teacher", "initial_generator", *report["methods"]]:
        r = res[name]
        print(f"{name:<24}{r['frac_positive']:>10.3f}{r['mean_reward']:>9.3f}{r['w1_to_pstar']:>9.3f}{r['kl_to_pstar']:>9.3f}{r['low_density_mass']:>10.3f}")
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")


def register(sub) -> None:
    p = sub.add_parser("toy", help="the toy experiment: methods against the exact optimum", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="optional YAML run config to start from (e.g. configs/toy.yaml)")
    p.add_argument("--means", help="1-D mixture means, comma-separated (default -2,2)")
    p.add_argument("--stds", help="mixture standard deviations (default 0.5,0.5)")
    p.add_argument("--weights", help="mixture weights, summing to 1 (default 0.5,0.5)")
    p.add_argument("--ring", type=int, help="use a 2-D ring of this many modes instead")
    p.add_argument("--reward", help="sigmoid:K | linear:C | step (default sigmoid:4)")
    p.add_argument("--beta", type=float, help="DIDR temperature (default 0.72)")
    p.add_argument("--drs", help="DIDR's DRS estimator: drp | mc | hybrid | exact")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, each NAME or NAME:field=value:... (default {DEFAULT_METHODS})")
    p.add_argument("--preset", default="fast", help="fast (minutes on a laptop CPU) | paper (the appendix schedule)")
    p.add_argument("--reference", help="trained (default) | exact (the mixture's analytic score)")
    p.add_argument("--schedule", help="vp-cosine (default) | flow | ve")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--sweep-beta", help="also run DIDR at these betas and draw the Pareto plot")
    p.add_argument("--sweep-alpha", help="DI++ endpoint weights for the sweep (default 0.5,1,2,4)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest when other work shares the cores)")
    p.set_defaults(func=run)
