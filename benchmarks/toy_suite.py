"""The toy on several mixtures: is DIDR at the exact optimum, and how long does it take?

    python benchmarks/toy_suite.py                      # fast preset, the mixtures below
    python benchmarks/toy_suite.py --only default       # one of them

Each case is one `didr toy` run at one seed (the same code path as the CLI); the script collects
every case's table into benchmarks/results/toy.md with the command, the machine and the wall time,
and checks DIDR against the targets |frac x>0 - exact| <= 0.05 and W1(samples, p*) <= 0.2. One seed
gives no interval: method comparisons are benchmarks/toy_frontiers.py's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from didr.cli import main as didr
from didr.eval.report import Provenance

CASES = {
    "default": [],
    "asymmetric": ["--means=-1.5,2.5", "--stds=0.4,0.6", "--weights=0.7,0.3"],
    "three-modes": ["--means=-3,0,3", "--stds=0.5,0.5,0.5", "--weights=0.3,0.4,0.3"],
    "exact-reference": ["--reference", "exact"],
    "ring-2d": ["--ring", "8"],
}


def run_case(name: str, extra: list[str], out_root: Path, methods: str, preset: str) -> dict:
    out = out_root / name
    args = ["toy", "--out", str(out), "--methods", methods, "--preset", preset, "--quiet", "--threads", str(torch.get_num_threads()), *extra]
    t0 = time.perf_counter()
    status = didr(args)
    seconds = time.perf_counter() - t0
    report = json.loads((out / "metrics.json").read_text())
    return {"name": name, "command": "didr " + shlex.join(args), "status": status, "seconds": seconds, "report": report}


def render(cases: list[dict], threads: int) -> str:
    lines = [
        "# Toy suite: each method against the exact optimum p*",
        "",
        *Provenance.here(f"python benchmarks/toy_suite.py --threads {threads}", "other work shared the 2 cores, so wall times are upper bounds").lines(),
        "",
    ]
    for case in cases:
        res = case["report"]["results"]
        exact = res["pstar"]
        lines += [f"## {case['name']}", "", f"`{case['command']}` — {case['seconds']:.0f} s wall (stages {res['stages_seconds']:.0f} s)", "",
                  f"exact p* ({case['report']['exact_method']}): mean reward {exact['exact']['mean_reward']:.4f}; "
                  "the pstar row is exact samples: its distances are the sampling floor.", "",
                  "| row | frac x>0 | mean r | off-data median (stds) | W1 to p* | beta' | W1 to p*(beta') | mode TV to p*(beta') | train s | DIDR targets |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in ["pstar", "q0", "reference_teacher", "initial_generator", *case["report"]["methods"]]:
            r = res[row]
            verdict = ""
            if row.startswith("didr"):
                ok = abs(r["frac_positive"] - exact["frac_positive"]) <= 0.05 and r["w1_to_pstar"] <= 0.2
                verdict = "met" if ok else "NOT met"
            lines.append(f"| {row} | {r['frac_positive']:.4f} | {r['mean_reward']:.4f} | {r['off_data_median']:.2f} | {r['w1_to_pstar']:.4f} | "
                         f"{r['beta_equal']:.3g} | {r['w1_equal']:.4f} | {r['mode_tv_equal']:.4f} | {r.get('train_seconds', '')} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=list(CASES), action="append")
    p.add_argument("--methods", default="didr,dipp,di,refl")  # DI++ at its default alpha: DIDR's average push (M13)
    p.add_argument("--preset", default="fast")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/toy-suite")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "toy.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = [run_case(n, CASES[n], Path(args.runs), args.methods, args.preset) for n in (args.only or CASES)]
    text = render(cases, args.threads)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
