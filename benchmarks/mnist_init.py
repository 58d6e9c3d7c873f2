"""What limits the MNIST one-step initialisation, and whether DI keeps what a better one gains.

    python benchmarks/mnist_init.py --bench-dir runs/mnist --out benchmarks/results/mnist_init.md

Uses the cached stages of a ``didr bench mnist`` run (reference, rewards, the preset's initial
generator). Each variant changes the initial generator's matched-noise regression onto 30-step
teacher samples (the preset regresses a copy of the reference at t_max onto 10,000 samples for 18,000
steps, batch 32, lr 1e-3, ending with the EMA 0.999 of its weights): by default the preset against
6,000 and 12,000 steps; ``--variants`` picks others (the earlier preset, its pool and length, the
regression's learning rate and batch, the generator's time input, its capacity). Every variant's initial
generator is scored, then DI alone (no reward, the preset's loop) runs from it with several seeds:
the DI target is FID real within 10% of the teacher's and precision / recall within 0.03.

The teacher pool is drawn once at the largest size (cached under ``BENCH_DIR/init/``); smaller pools
are its prefixes. Prints one line per run; writes the table to ``--out`` and its rows beside it (``.json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from didr.eval.frontier import mean_interval
from didr.eval.report import Provenance
from didr.experiments.digits.bench import default_jobs, preset, run_train_config
from didr.experiments.digits.evaluate import EVAL_SEED, Evaluator
from didr.experiments.digits.report import table
from didr.experiments.digits.stages import align, distill_generator, generate, prepare_stages, teacher_sample, teacher_sample_split
from didr.experiments.stages import cached_tensors
from didr.experiments.sweep import Setting
from didr.files import digest
from didr.models.unet import OneStepGenerator, UNetDenoiser

#: the preset before it adopted "pool 10k + 6k steps + EMA": pool 1,500, 1,500 steps, no EMA. Every
#: variant spells out what it takes from it, so a label keeps its meaning when the preset changes.
EARLIER = {"distill_steps": 1500, "distill_ema": 0.0}

#: (label, what it tests, changes): ``pool`` teacher samples, ``digits`` fields of the regression,
#: ``channels`` a fresh generator of these widths instead of a copy of the reference. "preset" is the
#: benchmark's own cached initial generator (no regression rerun).
VARIANTS = [
    ("preset", "the preset: pool 10,000, 18,000 steps, lr 1e-3, batch 32, EMA 0.999", {"preset": True}),
    ("earlier preset", "pool 1,500, 1,500 steps, lr 1e-3, batch 32, no EMA", {"pool": 1500, "digits": EARLIER}),
    ("pool 10k", "teacher pool size (earlier preset otherwise)", {"pool": 10000, "digits": EARLIER}),
    ("pool 10k + 6k steps + EMA", "pool, regression length and the EMA of its weights (0.999)",
     {"pool": 10000, "digits": {"distill_steps": 6000, "distill_ema": 0.999}}),
    ("12k steps + EMA", "12,000 steps", {"pool": 10000, "digits": {"distill_steps": 12000, "distill_ema": 0.999}}),
    ("18k steps + EMA", "18,000 steps (the preset's length, regressed afresh)", {"pool": 10000, "digits": {"distill_steps": 18000, "distill_ema": 0.999}}),
    ("24k steps + EMA", "24,000 steps (the preset's before 18,000)", {"pool": 10000, "digits": {"distill_steps": 24000, "distill_ema": 0.999}}),
    ("batch 128 + EMA", "6,000 steps at batch 128", {"pool": 10000, "digits": {"distill_steps": 6000, "distill_ema": 0.999, "distill_batch": 128}}),
    ("6k steps", "regression length on the earlier pool", {"pool": 1500, "digits": {"distill_steps": 6000, "distill_ema": 0.0}}),
    ("lr 3e-4", "regression learning rate", {"pool": 1500, "digits": {**EARLIER, "distill_lr": 3e-4}}),
    ("batch 128", "regression batch", {"pool": 10000, "digits": {**EARLIER, "distill_batch": 128}}),
    ("t = 0.9", "the generator's time input", {"pool": 10000, "digits": {**EARLIER, "generator_t": 0.9}}),
    ("wide 32/64", "generator capacity (a fresh 32/64-channel UNet)", {"pool": 10000, "channels": [32, 64], "digits": {"distill_steps": 6000, "distill_ema": 0.0}}),
]
#: what runs without --variants: the preset against shorter regressions
DEFAULT = ("preset", "pool 10k + 6k steps + EMA", "12k steps + EMA")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench-dir", required=True, help="output directory of a `didr bench mnist` run (its stages are reused)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=2, help="DI seeds per variant")
    p.add_argument("--variants", default=",".join(DEFAULT), help=f"comma-separated labels to run (default: {', '.join(DEFAULT)}; all: "
                   + "; ".join(v[0] for v in VARIANTS) + ")")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="processes for the regression's gradient shards (the figures do not depend on it)")
    p.add_argument("--pool", type=int, default=10000, help="teacher samples drawn once; variants use prefixes")
    args = p.parse_args()
    chosen = args.variants.split(",")
    unknown = set(chosen) - {v[0] for v in VARIANTS}
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    wanted = [v for v in VARIANTS if v[0] in chosen]
    torch.set_num_threads(1)
    cfg = preset("mnist", fast=False, overrides=["train.progress=false"])
    bench_dir = Path(args.bench_dir)
    t0 = time.perf_counter()
    stages = prepare_stages(cfg.digits, cfg.train.seed, bench_dir / "stages", progress=False)
    evaluate = Evaluator(stages)
    n = cfg.digits.eval_samples
    z, c = stages.inputs(n, EVAL_SEED)
    c_unseen = stages.inputs(n, EVAL_SEED, "unseen")[1]

    def score(label: str, seed, sample, seconds: float) -> dict:
        images = sample(z, c)
        row = {"label": label, "family": "init", "setting": "", "seed": seed, "nfe": 1, "seconds": seconds, **evaluate(images, c)}
        row["prompt_accuracy_seen"] = row["prompt_accuracy"]
        row["prompt_accuracy_unseen"] = evaluate.prompt_accuracy(sample(z, c_unseen), c_unseen)
        print(f"[{time.perf_counter() - t0:6.0f} s] {label} seed {seed}: FID {row['fid_real']:.2f} P {row['precision']:.3f} "
              f"R {row['recall']:.3f} acc {row['prompt_accuracy']:.3f}", flush=True)
        return row

    rows = [score("teacher 30 steps", None, lambda zz, cc: teacher_sample(stages.reference, zz, cc, cfg.digits.teacher_steps), 0.0)]
    rows[0]["nfe"] = cfg.digits.teacher_steps

    def draw_pool() -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(cfg.train.seed + 4)
        zp = torch.randn(args.pool, *stages.data.shape, generator=gen)
        index = torch.randint(0, stages.prompts.count(), (args.pool,), generator=gen)
        return {"z": zp, "c": index, "x": teacher_sample_split(stages.reference, zp, stages.prompts.batch(index), cfg.digits.teacher_steps, args.jobs)}

    ts = time.perf_counter()
    big = cached_tensors(bench_dir / "init" / "teacher_pool.safetensors", digest({"teacher": stages.keys["teacher"], "n": args.pool}), draw_pool)
    print(f"[{time.perf_counter() - t0:6.0f} s] teacher pool of {args.pool}: {time.perf_counter() - ts:.0f} s", flush=True)

    notes = {}
    for label, note, change in wanted:
        d = dataclasses.replace(cfg.digits, **change.get("digits", {}))
        size = change.get("pool", cfg.digits.teacher_pool)
        pool = {k: v[:size] for k, v in big.items()}
        t_gen = d.generator_t if d.generator_t is not None else stages.schedule.t_max
        if "channels" in change:
            torch.manual_seed(0)
            net = UNetDenoiser(stages.schedule, stages.data.n_classes, tuple(change["channels"]), d.patch, stages.data.sigma_data(),
                               text_dim=stages.ref_net.text_dim)
            net.null_text.copy_(stages.ref_net.null_text)
        else:
            net = copy.deepcopy(stages.ref_net)
        ts = time.perf_counter()
        if change.get("preset"):
            generator = stages.generator
        else:
            generator = OneStepGenerator(net.requires_grad_(True), t_gen)
            distill_generator(generator, pool, stages.prompts, d, cfg.train.seed + 5, progress=False, jobs=args.jobs)
        seconds = time.perf_counter() - ts
        init_label, di_label = f"init {label}", f"DI from {label}"
        notes[label] = note
        rows.append(score(init_label, None, lambda zz, cc, g=generator: generate(g, zz, cc), seconds))
        start = dataclasses.replace(stages, generator=generator.eval())
        for seed in range(args.seeds):
            di = Setting("DI", "", dataclasses.replace(cfg.method, name="di"))
            method, train = di.method, run_train_config(di, cfg, seed)
            ts = time.perf_counter()
            trained = align(start, method, train, None, desc=f"DI from {label} seed {seed}")
            rows.append(score(di_label, seed, lambda zz, cc, g=trained: generate(g, zz, cc), time.perf_counter() - ts))
    write(rows, notes, args, Path(args.out), time.perf_counter() - t0)


def write(rows: list[dict], notes: dict[str, str], args, path: Path, seconds: float) -> None:
    import os

    teacher = rows[0]
    lines = ["# What limits the MNIST one-step initialisation", "",
             *Provenance.here(f"python benchmarks/mnist_init.py --bench-dir DIR --out {path}"
                              + (f" --variants '{args.variants}'" if args.variants != ",".join(DEFAULT) else "") + f" --seeds {args.seeds}",
                              f"the stages of `didr bench mnist`; other jobs shared the CPUs; load average {os.getloadavg()[0]:.1f} at the end").lines(),
             f"Time: {seconds:.0f} s. DI seeds: {', '.join(map(str, range(args.seeds)))}; "
             "intervals: 95% Student-t over seeds; the initial generators are one seed each.", "",
             f"Target for DI: FID real at most {1.1 * teacher['fid_real']:.3g} (1.1 x the teacher's {teacher['fid_real']:.3g}), "
             f"precision and recall within 0.03 of {teacher['precision']:.3f} / {teacher['recall']:.3f}.", "", table(rows), "",
             "| variant | tests | init FID | init recall | DI FID / teacher | DI precision - teacher | DI recall - teacher | means within target "
             "| intervals within target (the bench's rule) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, note in notes.items():
        init = next(r for r in rows if r["label"] == f"init {label}")
        rs = [r for r in rows if r["label"] == f"DI from {label}"]
        (f, fh), (pr, ph), (rc, rh) = (mean_interval([r[k] for r in rs]) for k in ("fid_real", "precision", "recall"))
        fh, ph, rh = (0.0 if h != h else h for h in (fh, ph, rh))  # one seed: no interval
        means = f <= 1.1 * teacher["fid_real"] and abs(pr - teacher["precision"]) <= 0.03 and abs(rc - teacher["recall"]) <= 0.03
        # as didr.experiments.digits.report.claims judges DI: every interval inside the target
        intervals = f + fh <= 1.1 * teacher["fid_real"] and abs(pr - teacher["precision"]) + ph <= 0.03 and abs(rc - teacher["recall"]) + rh <= 0.03
        lines.append(f"| {label} | {note} | {init['fid_real']:.3g} | {init['recall']:.3f} | {f / teacher['fid_real']:.2f} | "
                     f"{pr - teacher['precision']:+.3f} | {rc - teacher['recall']:+.3f} | {'yes' if means else 'no'} | {'yes' if intervals else 'no'} |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
