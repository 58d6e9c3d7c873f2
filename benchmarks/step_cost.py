"""Step cost of DI, DI++, DIDR (DRP k = 1, 2, 4) and Monte-Carlo DRS on the toy, side by side.

    python benchmarks/step_cost.py                 # batch 2048 (the paper's), 2 threads
    python benchmarks/step_cost.py --batch 512 --repeats 30

Every method runs on the same networks (the toy's MLP reference, TA and generator). Methods are
timed round-robin, one step each per round, so that load from anything else on the machine hits
all of them alike; the median over rounds is reported for the generator update alone and for a
full outer step (5 TA updates + 1 generator update). Writes benchmarks/results/step_cost.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from didr.diffusion.schedules import VPCosineSchedule
from didr.eval.report import Provenance
from didr.models.mlp import MLPDenoiser, MLPGenerator
from didr.objectives.config import MethodConfig, build_objective
from didr.rewards.toy import SigmoidReward
from didr.train.config import TrainConfig
from didr.train.loop import Alignment, Trainer

METHODS = {
    "DI": dict(name="di"),
    "DI++": dict(name="dipp"),
    "DIDR DRP k=1": dict(name="didr", drs="drp", drp_steps=1),
    "DIDR DRP k=2": dict(name="didr", drs="drp", drp_steps=2),
    "DIDR DRP k=4": dict(name="didr", drs="drp", drp_steps=4),
    "DIDR Monte-Carlo (N=16, 8 steps)": dict(name="didr", drs="mc", mc_samples=16, mc_sampler_steps=8),
}


def make_trainer(method: dict, batch: int) -> Trainer:
    schedule = VPCosineSchedule()
    torch.manual_seed(0)
    ref = MLPDenoiser(schedule, 1, 128, 3, sigma_data=2.0).requires_grad_(False)
    gen = MLPGenerator(1, 128, 3)
    objective = build_objective(MethodConfig(**method), schedule, SigmoidReward(4.0), initial_generator=copy.deepcopy(gen))
    alignment = Alignment(gen, ref, copy.deepcopy(ref).requires_grad_(True), objective, lambda n: (torch.randn(n, 1), None))
    return Trainer(alignment, TrainConfig(batch_size=batch, ta_updates=5, progress=False))


def measure(batch: int, repeats: int) -> dict[str, dict[str, float]]:
    trainers = {name: make_trainer(m, batch) for name, m in METHODS.items()}
    gen_times = {name: [] for name in trainers}
    full_times = {name: [] for name in trainers}
    for round_ in range(repeats + 2):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            for _ in range(tr.cfg.ta_updates):
                tr.ta_step()
            t1 = time.perf_counter()
            tr.generator_step()
            t2 = time.perf_counter()
            if round_ >= 2:  # warm-up rounds are dropped
                gen_times[name].append(t2 - t1)
                full_times[name].append(t2 - t0)
    return {n: {"generator_ms": 1e3 * statistics.median(gen_times[n]), "outer_step_ms": 1e3 * statistics.median(full_times[n])} for n in trainers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_cost.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = measure(args.batch, args.repeats)
    base_gen, base_full = res["DI++"]["generator_ms"], res["DI++"]["outer_step_ms"]
    lines = [
        "# Step cost on the toy",
        "",
        *Provenance.here(f"python benchmarks/step_cost.py --batch {args.batch} --repeats {args.repeats} --threads {args.threads}").lines(),
        f"Medians over {args.repeats} round-robin rounds.",
        "",
        "| method | generator update (ms) | / DI++ | outer step: 5 TA + 1 generator (ms) | / DI++ |",
        "|---|---|---|---|---|",
    ]
    for name, r in res.items():
        lines.append(f"| {name} | {r['generator_ms']:.2f} | {r['generator_ms'] / base_gen:.2f} | {r['outer_step_ms']:.2f} | {r['outer_step_ms'] / base_full:.2f} |")
    ratio = res["DIDR DRP k=1"]["outer_step_ms"] / base_full
    lines += ["", f"DIDR (k=1) / DI++ per outer step: **{ratio:.2f}** (target <= 1.5).", ""]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
