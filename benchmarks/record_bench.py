"""Record ``didr bench digits|mnist`` runs in results/: the report regenerated from the runs' own
``metrics.json`` (no figure typed by hand), its figures copied beside it, and every run's time.

    didr bench mnist --out runs/mnist                                   # from scratch
    mkdir runs/mnist-cached && cp -r runs/mnist/stages runs/mnist-cached/
    didr bench mnist --out runs/mnist-cached                            # cached stages, every method retrained
    didr bench mnist --fast --out runs/mnist-fast
    python benchmarks/record_bench.py --name mnist --run "from scratch=runs/mnist" \\
        --run "cached stages=runs/mnist-cached" --run "smoke test, from scratch=runs/mnist-fast" --out benchmarks/results

The first ``--run`` is the one reported; each later run of the same benchmark (same dataset, same
``--fast``) is checked to have reproduced its figures on the runs both scored, and the time table
says whether it did. ``--section FILE`` includes another recorded result (e.g. results/mnist_drs.md);
``--keep-section TITLE`` carries a section of the existing record over unchanged.
Writes ``OUT/NAME.md``, ``OUT/NAME_frontiers.png`` and ``OUT/NAME_samples.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from didr.experiments.digits.report import ablation_summary, provenance, render_report, target_text

#: results recorded beside each benchmark's report, listed at its end
RELATED = {
    "mnist": [
        ("mnist_ablation.md", "what the loop alone costs in fidelity (`didr bench mnist --ablation`)"),
        ("mnist_init.md", "the initialisation's variants, each followed by DI (`benchmarks/mnist_init.py`)"),
        ("mnist_drs.md", "the DRS estimators against a many-sample Monte-Carlo reference per noise level (`benchmarks/mnist_drs.py`)"),
        ("mnist_teacher.md", "what limits the teacher (`benchmarks/mnist_teacher.py`)"),
    ],
}
IGNORED = {"seconds"}  # what may differ between two runs of the same command


def same_figures(a: dict, b: dict) -> bool:
    """Whether two runs of one benchmark produced the same figures (times aside) on every run both
    scored: a run with more settings (``--strong-end``) or more figures per row (a later version's)
    is compared on what the two have in common."""
    if a["dataset"] != b["dataset"] or a["fast"] != b["fast"]:
        return False
    first = {(r["label"], r["seed"]): r for r in a["rows"]}
    if not all((r["label"], r["seed"]) in first for r in b["rows"]):
        return False
    for r in b["rows"]:
        other = first[r["label"], r["seed"]]
        if any(not _same(r[k], other[k]) for k in r.keys() & other.keys() if k not in IGNORED):
            return False
    return True


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN (an undefined figure, such as FID p* below the data's reward)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def ablation_section(result: dict, name: str) -> str:
    """The distillation ablation's variant table, with its command, machine, seeds and time."""
    teacher = next(r for r in result["rows"] if r["family"] == "teacher")
    return "\n".join([
        "", "## Distillation ablation: what the loop alone costs in fidelity", "",
        *provenance(result, f"didr bench {result['dataset']} --ablation --out DIR", "on the same stages").lines(),
        f"Time: {result['seconds']:.0f} s. Seeds: {', '.join(map(str, result['seeds']))}; FID real as mean ± 95% Student-t half-width.", "",
        f"DI alone (no reward), one change of the loop at a time. {target_text(teacher)} With {len(result['seeds'])} seeds a 95% interval is wide "
        f"(Student-t with {len(result['seeds']) - 1} degree{'s' if len(result['seeds']) != 2 else ''} of freedom): the table ranks the variants by their "
        f"means and decides nothing. Every row in full: [{name}_ablation.md]({name}_ablation.md).", "",
        *ablation_summary(result), ""])


def included_section(path: Path) -> str:
    """A recorded markdown result as a section: its title one level down, its body as is."""
    title, _, body = path.read_text().partition("\n")
    return f"\n#{title}\n{body.rstrip()}\n\nRecorded as [{path.name}]({path.name}).\n"


def kept_section(path: Path, title: str) -> str:
    """The ``## title`` section of an earlier record, unchanged (its own provenance lines inside)."""
    text = path.read_text()
    start = text.find(f"\n## {title}")
    if start < 0:
        raise SystemExit(f"{path} has no section '## {title}'")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)].rstrip() + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the results' name, e.g. mnist: writes NAME.md and NAME_*.png")
    p.add_argument("--run", action="append", required=True, metavar="WHAT=DIR", help="a run's description and its --out directory; the first is reported")
    p.add_argument("--ablation", metavar="DIR", help="the --out directory of a `didr bench NAME --ablation` run: its variant table goes into the report")
    p.add_argument("--section", action="append", metavar="FILE", help="a recorded markdown result (e.g. results/mnist_drs.md) to include as a section")
    p.add_argument("--keep-section", action="append", metavar="TITLE", help="a '## TITLE' section of the existing OUT/NAME.md to carry over unchanged")
    p.add_argument("--out", required=True, help="the results directory")
    args = p.parse_args()
    runs = []
    for spec in args.run:
        what, _, folder = spec.rpartition("=")
        runs.append((what, Path(folder), json.loads((Path(folder) / "metrics.json").read_text())))
    first = runs[0][2]
    timings = []
    for what, _, result in runs:
        if result is not first and result["dataset"] == first["dataset"] and result["fast"] == first["fast"]:
            what += f" (figures {'identical to' if same_figures(first, result) else 'DIFFERENT from'} the first run's)"
        timings.append((what, result))
    out = Path(args.out)
    kept = [kept_section(out / f"{args.name}.md", title) for title in args.keep_section or []]  # read before the file is rewritten
    text = render_report(first, figures=f"{args.name}_", timings=timings)
    for section in args.section or []:
        text += included_section(Path(section))
    text += "".join(f"\n{k.lstrip()}" for k in kept)
    if args.ablation:
        text += ablation_section(json.loads((Path(args.ablation) / "ablation.json").read_text()), args.name)
    if args.name in RELATED:
        text += "\n## Related results\n\n" + "\n".join(f"- [{f}]({f}): {what}" for f, what in RELATED[args.name]) + "\n"
    (out / f"{args.name}.md").write_text(text)
    for figure in ("frontiers.png", "samples.png"):
        shutil.copyfile(runs[0][1] / figure, out / f"{args.name}_{figure}")
    print(f"wrote {out / f'{args.name}.md'} and its figures")


if __name__ == "__main__":
    main()
