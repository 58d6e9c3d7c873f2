"""``didr eval GENERATOR [GENERATOR ...] --out DIR``: generators side by side on one prompt set, one
set of seeds and one set of rewards; ``didr compare DIR DIR``: two evaluations' tables, refused
unless their protocols agree (``--force`` to compare anyway).

    didr eval runs/sdxl-dmd2 stabilityai/stable-diffusion-xl-base-1.0?steps=50&guidance=8&name=teacher \\
        --prompts prompts.txt --reward pickscore --reward hpsv2 --seeds 4 --base teacher --out evals/sdxl
    didr compare evals/sdxl evals/sdxl-other

See :mod:`didr.eval.evaluate` for what is written and :mod:`didr.eval.generators` for generator specs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from didr.errors import ConfigError
from didr.eval import evaluate
from didr.eval.evaluate import EvalConfig, load_metrics, run_eval
from didr.eval.protocol import mismatches
from didr.eval.stats import Interval


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="sample, score and compare generators on a prompt set", description=evaluate.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generators", nargs="+", metavar="GENERATOR", help="a didr run, its export, or a diffusers pipeline folder / hub id [?steps=&guidance=&name=]")
    p.add_argument("--out", required=True, help="output folder (images, scores.csv, metrics.json, report.md, grid.png)")
    p.add_argument("--prompts", default="builtin", help="prompt file (.txt, .jsonl, .json, .csv, .tsv, .parquet, a benchmark's released layout) or builtin")
    p.add_argument("-r", "--reward", action="append", metavar="SPEC", help="reward spec, repeatable (default: pickscore)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    p.add_argument("--seed-base", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    p.add_argument("--categories", nargs="+", default=[], help="only the prompts of these categories")
    p.add_argument("--features", default=None, metavar="SPEC", help="feature model: clip:REF, dinov2:REF or inception:FILE (diversity, drift, fidelity)")
    p.add_argument("--reference", default=None, metavar="NAME|DIR", help="fidelity reference: a generator's name (the teacher) or a folder of images")
    p.add_argument("--resolution", type=int, default=None, help="image side for pipelines (exports use their own)")
    p.add_argument("--base", default=None, help="the generator the others are compared with (default: the first)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the pipelines' weights")
    p.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    p.set_defaults(func=run)

    c = subparsers.add_parser("compare", help="two didr eval reports side by side, if their protocols agree",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("reports", nargs=2, metavar="DIR", help="didr eval output folders (or their metrics.json)")
    c.add_argument("--force", action="store_true", help="compare even when the protocols differ (the differences are printed)")
    c.set_defaults(func=compare)


def run(args: argparse.Namespace) -> int:
    cfg = EvalConfig(generators=args.generators, out=args.out, prompts=args.prompts, rewards=args.reward or ["pickscore"], seeds=args.seeds,
                     seed_base=args.seed_base, limit=args.limit, categories=args.categories, features=args.features,
                     reference=args.reference, resolution=args.resolution, base=args.base, device=args.device,
                     dtype=args.dtype, batch=args.batch)
    metrics = run_eval(cfg)
    print((Path(args.out) / "report.md").read_text().split("## Against")[0].strip())
    print(f"wrote {args.out}/{{scores.csv, metrics.json, report.md, grid.png}} ({len(metrics['generators'])} generators)")
    return 0


def compare(args: argparse.Namespace) -> int:
    a, b = (load_metrics(Path(r)) for r in args.reports)
    differ = mismatches(a["protocol"], b["protocol"])
    if differ and not args.force:
        raise ConfigError(f"{args.reports[0]} and {args.reports[1]} were not measured alike: {'; '.join(differ)} (--force to compare anyway)")
    for line in differ:
        print(f"protocols differ: {line}")
    rewards = list(a["protocol"]["rewards"])
    print("| report | generator | " + " | ".join(rewards) + " |")
    print("|---|---|" + "---|" * len(rewards))
    for report, metrics in zip(args.reports, (a, b)):
        for name, g in metrics["generators"].items():
            cells = [Interval(**g["rewards"][r]).format() if r in g["rewards"] else "-" for r in rewards]
            print(f"| {report} | {name} | " + " | ".join(cells) + " |")
    return 0
