"""How often the comparison procedure declares a difference where there is none: frontiers of one
method against frontiers of the same method from other seeds.

    python benchmarks/verdict_null.py --jobs 2                 # the toy, DIDR and DI++ at 6 seeds, fast preset
    python benchmarks/verdict_null.py --preset smoke --seeds 6 --out /tmp/null.md

One `didr toy --frontier` call trains DIDR and DI++ over their strength grids with 6 seeds (cached
under RUNS). Every way of splitting the 6 seeds into two groups of 3 gives a family in which no
method differs: DIDR (seeds of group A) against DIDR (group B), DI++ against DI++, on every metric,
paired in seed order across the groups (different stages, so the paired differences carry the
stages' spread too). Each family is decided by the library's procedure
(:data:`didr.eval.frontier.PROCEDURE`) and, for comparison, by pointwise 95% verdicts
(:data:`didr.eval.frontier.POINTWISE`); the report counts the families with any verdict. The 10
splits share their runs, so they are a check of the procedure on real frontiers, not an estimate
of its rate; tests/eval/test_frontier.py measures the rate on many simulated families.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import time
from pathlib import Path

import torch

from didr.cli import main as didr
from didr.eval.frontier import POINTWISE, PROCEDURE, Point, compare_family
from didr.eval.report import Provenance, markdown_table, render
from didr.experiments.toy.report import METRICS

RESULTS = Path(__file__).parent / "results"


def relabel(points: list[Point], seeds: tuple[int, ...], name: str) -> list[Point]:
    """The points of ``seeds`` only, renamed ``name`` and re-seeded 0, 1, ... in the given order."""
    out = []
    for p in points:
        idx = [p.seeds.index(s) for s in seeds]
        out.append(Point(name, p.setting, p.reward[idx], {k: v[idx] for k, v in p.errors.items()}, list(range(len(seeds)))))
    return out


def null_families(points: list[Point], methods: list[str], seeds: list[int]) -> list[tuple[tuple[int, ...], list[Point], list[tuple[str, str]]]]:
    """Every split of ``seeds`` into two equal groups (each split once): the relabelled points and the pairs to compare."""
    half = len(seeds) // 2
    out = []
    for group in itertools.combinations(seeds, half):
        if seeds[0] not in group:  # (A, B) and (B, A) are the same split
            continue
        rest = tuple(s for s in seeds if s not in group)
        pts, pairs = [], []
        for m in methods:
            mine = [p for p in points if p.method == m]
            pts += relabel(mine, group, f"{m} A") + relabel(mine, rest, f"{m} B")
            pairs.append((f"{m} A", f"{m} B"))
        out.append((group, pts, pairs))
    return out


def decide_families(families, procedure) -> list[dict]:
    rows = []
    for group, pts, pairs in families:
        comparisons = compare_family(pts, pairs, METRICS, procedure=procedure)
        verdicts = [f"{c.a.rsplit(' ', 1)[0]} {c.metric}: {v} {lo:.3g}-{hi:.3g}" for c in comparisons for v, lo, hi in c.ranges() if v != "level"]
        decision = comparisons[0].decision
        rows.append({"group": list(group), "looks": decision.looks, "declared": decision.declared, "verdicts": verdicts})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--methods", default="didr,dipp")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs", default="runs/verdict-null")
    p.add_argument("--out", default=str(RESULTS / "verdict_null.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out_dir = Path(args.runs) / args.preset
    cli = ["toy", "--frontier", "--out", str(out_dir), "--preset", args.preset, "--seeds", str(args.seeds), "--jobs", str(args.jobs),
           "--methods", args.methods, "--quiet"]
    if didr(cli) != 0:
        raise SystemExit("didr toy --frontier failed")
    report = json.loads((out_dir / "frontier.json").read_text())
    points = [Point(q["method"], q["setting"], q["reward"], q["errors"], q["seeds"]) for q in report["points"]]
    families = null_families(points, args.methods.split(","), report["seeds"])
    found = {name: decide_families(families, proc) for name, proc in (("corrected", PROCEDURE), ("pointwise", POINTWISE))}
    table = markdown_table(["seeds A / B", "looks", "declared points: corrected / pointwise", "verdicts: corrected", "verdicts: pointwise 95%"],
                           [[f"{', '.join(map(str, c['group']))} / {', '.join(str(s) for s in report['seeds'] if s not in c['group'])}", c["looks"],
                             f"{c['declared']} / {w['declared']}", "; ".join(c["verdicts"]) or "none", "; ".join(w["verdicts"]) or "none"]
                            for c, w in zip(found["corrected"], found["pointwise"])])
    hits = {name: sum(bool(r["verdicts"]) for r in rows) for name, rows in found.items()}
    summary = (f"{len(families)} families (every split of {args.seeds} seeds into two groups of {args.seeds // 2}), each comparing "
               f"{' and '.join(args.methods.split(','))} with themselves on {', '.join(METRICS)}: the corrected procedure "
               f"({PROCEDURE.text()}) declared a verdict in {hits['corrected']} of them, pointwise 95% verdicts in {hits['pointwise']}.")
    command = "python benchmarks/verdict_null.py " + shlex.join(["--preset", args.preset, "--seeds", str(args.seeds), "--methods", args.methods,
                                                                   "--jobs", str(args.jobs)])
    prov = Provenance.here(command, f"{args.jobs} processes of one torch thread; the runs: `didr {shlex.join(cli)}`")
    text = render("Verdicts where nothing differs: one method's frontiers against its own from other seeds", prov,
                  [__doc__.split("\n\n", 2)[2].strip(), summary, table, f"Time: {time.perf_counter() - t0:.0f} s (runs cached under {args.runs})."])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
