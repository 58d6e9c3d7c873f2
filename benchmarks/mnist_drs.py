"""The DRS estimators at MNIST's scale: DRP with k = 1, 2, 4 against a reference DRS per noise
level, with what each costs.

    python benchmarks/mnist_drs.py --bench-dir runs/mnist --beta 0.25 --out benchmarks/results/mnist_drs.md

Uses the cached stages of a ``didr bench mnist`` run (reference, reward, initial generator). Points
x_t = a x_0 + s eps at each noise level t, with x_0 from the initial one-step generator (or, with
``--generator``, from a finished run's generator, e.g. DIDR at the strong end). There is no exact
DRS on MNIST, so the reference is Monte Carlo (M9): ``--ref-samples`` posterior samples of the
reference's ancestral sampler with ``--ref-steps`` steps, drawn as two independent halves A and B.
Their mean is the reference; their disagreement measures its own noise, which is subtracted:

    error^2 = mean ||est - (A + B) / 2||^2 - mean ||A - B||^2 / 4,  signal^2 = mean ||(A + B) / 2||^2 - mean ||A - B||^2 / 4

and the relative RMSE is error / signal (corrected for the reference's noise, not for the bias its
finite steps and self-normalised weights leave: the report shows its weights' effective sample
size and, with ``--step-check``, the same reference with half the steps). Also per estimator: the
shrinkage <est, ref> / ||ref||^2 (below 1: the estimate points the right way but is too short) and
the seconds per point. Writes the markdown report and a JSON beside it (``.json``), which
``benchmarks/record_bench.py --drs`` copies into results/mnist.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from didr.eval.report import Provenance, markdown_table, render
from didr.experiments.digits.bench import preset
from didr.experiments.digits.stages import prepare_stages
from didr.objectives.drs import DRPEstimator, MonteCarloDRS

RELATIVE_TOLERANCE = 0.3  # a time range is "trusted" where the relative RMSE stays below this


def noise_corrected(est: torch.Tensor, half_a: torch.Tensor, half_b: torch.Tensor) -> dict[str, float]:
    """An estimate's error against the mean of two independent reference halves, with the
    reference's own noise (from the halves' disagreement) removed; mean over the points (dim 0)."""
    e, a, b = (v.flatten(1).double() for v in (est, half_a, half_b))
    ref = (a + b) / 2
    noise = float(((a - b) ** 2).sum(1).mean() / 4)
    signal = float((ref**2).sum(1).mean()) - noise
    err = float(((e - ref) ** 2).sum(1).mean()) - noise
    return {"rel_rmse": math.sqrt(max(err, 0.0) / signal) if signal > 0 else math.nan,
            "shrinkage": float((e * ref).sum(1).mean()) / signal if signal > 0 else math.nan,  # <est, truth> / ||truth||^2: the noise is independent of est
            "ref_noise": math.sqrt(noise / signal) if signal > 0 else math.inf}


def measure(ref, reward, beta: float, x0: torch.Tensor, cond, times: list[float], ref_samples: int, ref_steps: int, drp_steps=(1, 2, 4),
            mc=((8, 2),), step_check: bool = False, seed: int = 0, log=print) -> dict:
    """Every estimator at every noise level on the same points: noise-corrected relative RMSE,
    shrinkage and seconds per point against the split-half Monte-Carlo reference. ``mc``: the
    (samples, steps) of cheap Monte-Carlo estimators to measure beside DRP."""
    estimators = {f"DRP k={k}": DRPEstimator(reward, beta, k) for k in drp_steps}
    estimators.update({f"MC {n}x{k}": MonteCarloDRS(reward, beta, n, k, seed=seed + 5) for n, k in mc})
    half = ref_samples // 2
    halves = [MonteCarloDRS(reward, beta, half, ref_steps, seed=seed + 2 + i) for i in range(2)]
    if step_check:
        estimators[f"MC {ref_samples}x{max(ref_steps // 2, 1)} (half the steps)"] = MonteCarloDRS(reward, beta, ref_samples, max(ref_steps // 2, 1), seed=seed + 9)
    out: dict = {"times": times, "estimators": {name: [] for name in estimators}, "reference": []}
    for t_value in times:
        t = torch.full((len(x0),), float(t_value))
        gen = torch.Generator().manual_seed(seed + int(round(t_value * 1000)))
        x_t = ref.schedule.add_noise(x0, t, torch.randn(x0.shape, generator=gen))
        start = time.perf_counter()
        a, b = (h(ref, x_t, t, cond) for h in halves)
        ref_seconds = (time.perf_counter() - start) / len(x0)
        noise = noise_corrected((a.drs + b.drs) / 2, a.drs, b.drs)
        ess = float(torch.cat([a.ess, b.ess]).mean())
        out["reference"].append({"t": t_value, "ref_noise": noise["ref_noise"], "ess": ess, "ess_of": half, "seconds_per_point": ref_seconds,
                                 "drs_norm": float(((a.drs + b.drs) / 2).flatten(1).norm(dim=1).mean())})
        cells = []
        for name, est in estimators.items():
            start = time.perf_counter()
            drs = est(ref, x_t, t, cond).drs
            seconds = (time.perf_counter() - start) / len(x0)
            found = {"t": t_value, **noise_corrected(drs, a.drs, b.drs), "seconds_per_point": seconds}
            out["estimators"][name].append(found)
            cells.append(f"{name} {found['rel_rmse']:.2f}")
        log(f"t = {t_value:g}: reference noise {noise['ref_noise']:.2f}, weights' ESS {ess:.1f} of {half}; relative RMSE " + ", ".join(cells))
    out["trusted_up_to"] = {name: trusted_up_to(rows) for name, rows in out["estimators"].items()}
    return out


def trusted_up_to(rows: list[dict], tolerance: float = RELATIVE_TOLERANCE) -> float | None:
    """The largest t up to which every measured level's relative RMSE stays below ``tolerance``."""
    best = None
    for row in sorted(rows, key=lambda r: r["t"]):
        if not row["rel_rmse"] < tolerance:
            break
        best = row["t"]
    return best


def tables(result: dict) -> str:
    """The relative RMSE and shrinkage per estimator and noise level, the reference's own figures, and the cost."""
    times = result["times"]
    head = ["estimator", *(f"t = {t:g}" for t in times), "trusted up to", "ms per point (mean)"]
    rows = []
    for name, found in result["estimators"].items():
        upto = result["trusted_up_to"][name]
        rows.append([name, *(f"{r['rel_rmse']:.2f} / {r['shrinkage']:.2f}" for r in found), "none" if upto is None else f"t = {upto:g}",
                     f"{1000 * sum(r['seconds_per_point'] for r in found) / len(found):.1f}"])
    ref = result["reference"]
    rows.append([f"reference ({result['ref_samples']} x {result['ref_steps']}): own noise / weights' ESS", *(f"{r['ref_noise']:.2f} / {r['ess']:.0f} of {r['ess_of']}"
                 for r in ref), "", f"{1000 * sum(r['seconds_per_point'] for r in ref) / len(ref):.0f}"])
    rows.append(["reference's mean DRS norm", *(f"{r['drs_norm']:.3g}" for r in ref), "", ""])
    return markdown_table(head, rows)


def describe(result: dict) -> str:
    return (f"beta = {result['beta']:g}; {result['points']} points per noise level, x_0 from {result['x0_from']}. Each cell: the relative RMSE "
            f"against the reference, its own noise removed / the shrinkage <est, ref> / ||ref||^2 (1: right length; below: too short). "
            f"Trusted up to: the largest t up to which the relative RMSE stays below {RELATIVE_TOLERANCE:g}. Reference: Monte Carlo (M9) with "
            f"{result['ref_samples']} posterior samples x {result['ref_steps']} ancestral steps in two independent halves; its own noise is the "
            "relative RMSE of its mean that the halves' disagreement implies, and the weights' ESS (per half) says how many posterior samples "
            "carry it (few: its self-normalised weights can leave a bias that the noise figure does not see).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-dir", required=True, help="output directory of a `didr bench mnist` run (its stages are reused)")
    p.add_argument("--out", required=True, help="the markdown report; a .json with the same stem is written beside it")
    p.add_argument("--beta", type=float, default=0.25)
    p.add_argument("--points", type=int, default=8, help="points per noise level")
    p.add_argument("--times", default="0.05,0.1,0.2,0.3,0.4,0.6,0.8")
    p.add_argument("--ref-samples", type=int, default=256)
    p.add_argument("--ref-steps", type=int, default=100, help="ancestral steps per posterior sample (fewer leave the samples under-dispersed: a DRS too short)")
    p.add_argument("--mc", default="8x2", help="cheap Monte-Carlo estimators to measure too, SAMPLESxSTEPS, comma-separated ('' for none)")
    p.add_argument("--step-check", action="store_true", help="also the reference with half the steps: are the steps enough?")
    p.add_argument("--generator", help="a finished run's generator.safetensors (OUT/runs/<run>/): x_0 from it instead of the initial generator")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="the stages of `didr bench mnist --fast` (a smoke test)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("mnist", fast=args.fast)
    stages = prepare_stages(cfg.digits, cfg.train.seed, Path(args.bench_dir) / "stages", progress=False)
    generator = stages.generator
    if args.generator:
        generator.load_state_dict(load_file(args.generator))
    z, c = stages.inputs(args.points, seed=7)
    with torch.no_grad():
        x0 = generator(z, c)
    t0 = time.perf_counter()
    result = measure(stages.reference, stages.reward, args.beta, x0, c, [float(t) for t in args.times.split(",")], args.ref_samples,
                     args.ref_steps, mc=[tuple(int(v) for v in m.split("x")) for m in args.mc.split(",") if m], step_check=args.step_check)
    x0_from = f"the generator of {Path(args.generator).parent.name}" if args.generator else "the initial one-step generator"
    result.update(beta=args.beta, points=args.points, ref_samples=args.ref_samples, ref_steps=args.ref_steps, x0_from=x0_from,
                  seconds=round(time.perf_counter() - t0, 1))
    command = (f"python benchmarks/mnist_drs.py --bench-dir DIR --beta {args.beta:g} --points {args.points} --times {args.times} "
               f"--ref-samples {args.ref_samples} --ref-steps {args.ref_steps} --mc '{args.mc}'" + (" --step-check" if args.step_check else "")
               + (" --generator DIR/runs/" + Path(args.generator).parent.name + "/generator.safetensors" if args.generator else "") + f" --out {args.out}")
    prov = Provenance.here(command, f"the stages of `didr bench mnist`, {args.threads} torch thread(s); other jobs shared the cores")
    result["provenance"] = prov.to_dict()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = render(f"The DRS estimators at MNIST's scale (beta = {args.beta:g})", prov,
                  [describe(result), tables(result), f"Time: {result['seconds']:.0f} s."])
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
