"""``didr bench digits|mnist``: every method on real digits, each over its own strength, with seeds.

The benchmark runs the 30-step teacher, the initial one-step generator and, through the one
training loop, DI and four reward methods, each over its own strength (docs/method.md §7): DIDR over
beta, DI++ and DMD with an endpoint reward over alpha, ReFL over its regulariser weight
(:data:`didr.experiments.sweep.STRENGTH_GRIDS`). Every setting runs with several seeds; seed s
varies the alignment (generator inputs, noise levels, TA noise) on stages prepared once (reference,
rewards, initial generator: their training is most of the cost). Per setting, reward and errors get
Student-t intervals over seeds; methods are compared at equal reward, paired by seed. The errors:
FID to held-out real images, FID to the empirical optimum of the run's own reward (FID p*) and the
gold attribute's deficit. Writes ``metrics.json``, ``frontiers.png``, ``samples.png``, one grid per
setting under ``grids/`` and ``report.md``. Stages are cached under ``OUT/stages/`` and each
finished run under ``OUT/runs/``, so a rerun, or a run resumed after an interruption, skips them.
With ``jobs`` > 1 the rewards train in another process beside the reference, the reference's and
the regression's gradient shards run one per process and another process samples half the teacher
pool; once the stages are built, worker processes train the runs (each depends only on its seed
and the stages). The figures are the same for any number of processes.

:func:`ablation` runs DI alone (no reward) under variants of the loop and writes ``ablation.md``:
which setting costs fidelity against the teacher.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from didr import config as cfgio
from didr.data.digits import stroke_style
from didr.diffusion.denoiser import GuidedDenoiser
from didr.eval.calibration import calibration_series
from didr.eval.frontier_plots import plot_comparisons
from didr.eval.plots import save_grid
from didr.experiments.config import RunConfig
from didr.experiments.digits.calibration import Calibration, calibrated, given_betas
from didr.experiments.digits.evaluate import EVAL_SEED, Evaluator
from didr.experiments.digits.floor import OptimumFloor, add_floor
from didr.experiments.digits.presets import DI_SEEDS, SEEDS, preset_data
from didr.experiments.digits.report import METRIC_NAMES, METRICS, analyse, reference_points, render_report, sample_figure, write_ablation
from didr.experiments.digits.stages import align, generate, prepare_stages, teacher_sample
from didr.experiments.stages import cached_timed
from didr.experiments.sweep import STRENGTH_GRIDS, RunPool, Setting
from didr.files import atomic_write_text, digest
from didr.objectives.config import MethodConfig
from didr.runtime import load_average, machine, today
from didr.train.config import TrainConfig


def sweep(fast: bool, base: MethodConfig) -> list[Setting]:
    """The settings of the benchmark, each run with every seed: ``base`` (the preset's method
    section) with each setting's fields. Every alpha is set here, never left to the config's default."""
    g = STRENGTH_GRIDS["digits-fast" if fast else "digits"]
    m = lambda **fields: replace(base, **fields)  # noqa: E731
    mc_beta = g["didr"][len(g["didr"]) // 2]
    return ([Setting("DI", "", m(name="di"))]
            + [Setting("DIDR", f"b={b:g}", m(name="didr", beta=b, drp_steps=1)) for b in g["didr"]]
            + [Setting("DI++", f"a={a:g}", m(name="dipp", alpha=a)) for a in g["dipp"]]
            + [Setting("DMD+r", f"a={a:g}", m(name="dmdr", alpha=a)) for a in g["dmdr"]]
            + [Setting("ReFL", f"reg={r:g}", m(name="refl", refl_reg=r)) for r in g["refl"]]
            + [Setting("DIDR MC", f"b={mc_beta:g}", m(name="didr", beta=mc_beta, drs="mc", mc_samples=8, mc_sampler_steps=2),
                       cost=2.5)])  # measured: 81 s a run against DI's 31


#: the strong end rerun (``--strong-end``), beside the present runs: DIDR where benchmarks/results/mnist_drs.md
#: finds DRP least wrong. Above t = 0.4 its relative error reaches 1; below, k = 2 shrinks the DRS less
#: than k = 1 at t = 0.2-0.3 for 1.4x its cost (k = 4: no better, 2.4x). No DRP setting is within 30% there.
#: The second variant keeps every noise level, to separate the estimator from the time range; it lands
#: on its beta (beta' / beta 0.9 at beta 0.25, where k = 1 reaches 3.8), so its grid is the betas whose
#: tilted teacher spans the baselines' rewards.
STRONG_END = [{"family": "DIDR k=2 t<0.4", "fields": {"drp_steps": 2, "t_max": 0.4}, "betas": [0.25, 0.125]},
              {"family": "DIDR k=2", "fields": {"drp_steps": 2}, "betas": [2.0, 1.0, 0.5, 0.25]}]


def strong_end_settings(base: MethodConfig) -> list[Setting]:
    """DIDR with each strong end variant's estimator and time range at each of its betas."""
    return [Setting(v["family"], f"b={b:g}", replace(base, name="didr", beta=b, **v["fields"]), cost=1.5)
            for v in STRONG_END for b in v["betas"]]


def ablation_settings(base: MethodConfig) -> list[Setting]:
    """The fidelity ablation: DI alone under one change each of the loop (``target_cfg``: the
    guidance scale of the alignment target, the teacher's own scale unchanged)."""
    di = replace(base, name="di")
    return [
        Setting("DI", "baseline", di, note="the preset's loop"),
        Setting("DI", "target w=2", di, target_cfg=2.0, note="a CFG-guided target against the TA's unguided fit of the generator"),
        Setting("DI", "TA updates 1", di, {"ta_updates": 1}, note="TA lag"),
        Setting("DI", "TA updates 5", di, {"ta_updates": 5}, note="TA lag"),
        Setting("DI", "TA lr 1e-4", di, {"lr_ta": 1e-4}, note="TA lag"),
        Setting("DI", "gen lr 3e-5", di, {"lr_generator": 3e-5}, note="generator step size"),
        Setting("DI", "gen lr 3e-4", di, {"lr_generator": 3e-4}, note="generator step size"),
        Setting("DI", "no gen EMA", di, {"ema_decay": 0.0}, note="generator EMA"),
        Setting("DI", "batch 64", di, {"batch_size": 64}, note="batch size"),
        Setting("DI", "steps x2", di, note="budget", budget=2.0),
        Setting("DI", "omega snr", replace(di, omega="snr"), note="the generator's weighting over noise levels"),
    ]


def preset(dataset: str, fast: bool, overrides: list[str] | None = None) -> RunConfig:
    """The benchmark's RunConfig: the preset, the --fast settings, then --set overrides."""
    return cfgio.from_dict(RunConfig, preset_data(dataset, fast, overrides))


def slug(label: str) -> str:
    """A file name for a run label: 'DIDR b=0.5 k=2 t<0.4' -> 'DIDR_b0.5_k2_tlt0.4'."""
    return label.replace(" ", "_").replace("=", "").replace("<", "lt").replace(">", "gt").replace("(", "").replace(")", "").replace("+", "p")


def run_train_config(setting: Setting, cfg: RunConfig, seed: int) -> TrainConfig:
    """The train section of one run at one seed: the preset's, with the setting's overrides and budget."""
    train = {**cfgio.to_dict(cfg.train), **setting.train, "seed": seed}
    train["steps"] = max(1, round(setting.budget * train["steps"]))
    return cfgio.from_dict(TrainConfig, train, "train")


def run_method(stages, setting: Setting, cfg: RunConfig, out: Path, seed: int) -> dict:
    """Align one setting at one seed, or load its generator when a finished run with the same
    settings is cached."""
    method_cfg, train = setting.method, run_train_config(setting, cfg, seed)
    trained = {k: v for k, v in cfgio.to_dict(train).items() if k != "progress"}  # how a run reports itself is not what it trains
    key = digest({"stages": stages.keys, "method": cfgio.to_dict(method_cfg), "train": trained, "target_cfg": setting.target_cfg})
    run_dir = out / "runs" / f"{slug(setting.label)}_s{seed}"
    reference = GuidedDenoiser(stages.ref_net, setting.target_cfg, stages.prompts.null_cond) if setting.target_cfg else None
    train_it = lambda: align(stages, method_cfg, train, run_dir, desc=f"{setting.label} seed {seed}", reference=reference).state_dict()  # noqa: E731
    state, seconds = cached_timed(run_dir / "generator.safetensors", key, train_it)
    generator = copy.deepcopy(stages.generator)
    generator.load_state_dict(state)
    return {"generator": generator, "seconds": seconds}


#: a worker process's stages and settings, loaded once by :func:`_init_worker`
_WORKER: dict = {}


def _init_worker(dataset: str, out: str, fast: bool, overrides: list[str]) -> None:
    """Load the stages the main process built (from ``OUT/stages``) into this worker."""
    cfg = preset(dataset, fast, [*overrides, "train.progress=false"])  # the main process reports each run
    torch.set_num_threads(cfg.digits.threads)
    _WORKER.update(cfg=cfg, out=Path(out), stages=prepare_stages(cfg.digits, cfg.train.seed, Path(out) / "stages", progress=False))


def _train_task(setting: Setting, seed: int) -> float:
    """Train (or find cached) one run in a worker; the main process loads and evaluates it."""
    return run_method(_WORKER["stages"], setting, _WORKER["cfg"], _WORKER["out"], seed)["seconds"]


def default_jobs() -> int:
    """Two processes where there are two cores (the benchmark's machine), one otherwise."""
    return min(2, os.cpu_count() or 1)


class Bench:
    """Shared by the benchmark and the ablation: stages, evaluation inputs, rows, grids."""

    def __init__(self, dataset: str, out: Path, fast: bool, overrides: list[str] | None, log, jobs: int = 1):
        self.cfg = preset(dataset, fast, overrides)
        torch.set_num_threads(self.cfg.digits.threads)
        self.dataset, self.out, self.fast, self.overrides, self.jobs = dataset, out, fast, list(overrides or []), jobs
        out.mkdir(parents=True, exist_ok=True)
        self.t0, self.load_start = time.perf_counter(), load_average()
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
        s, d = self.stages, self.cfg.digits
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
        self.teacher_rewards = self.evaluate.rewards(images["seen"], self.c)["reward"]  # per sample, for calibration
        self.teacher_labels = s.prompts.digits(self.c)
        self.record("initial 1 step", "initial", "", None, 1, lambda z, c: generate(s.generator, z, c), 0.0)

    def evaluate_run(self, setting: Setting, seed: int) -> dict:
        self.log(f"method: {setting.label} seed {seed}")
        res = run_method(self.stages, setting, self.cfg, self.out, seed)
        return self.record(setting.label, setting.family, setting.setting, seed, 1, lambda z, c: generate(res["generator"], z, c), res["seconds"])

    def run_all(self, tasks: list[tuple[Setting, int]]) -> None:
        """The reference rows (real, teacher, initial), then every (setting, seed), rows in this
        order. With ``jobs`` > 1, worker processes (one torch thread each) train the runs, the
        costliest first, while this process scores the references and then each run in order once
        it is done; a run depends only on its seed and the stages, so the figures do not depend on ``jobs``."""
        if self.jobs > 1:
            self.log(f"{len(tasks)} runs in {self.jobs} worker processes")
        with RunPool(self.jobs, _init_worker, (self.dataset, str(self.out), self.fast, self.overrides)) as pool:
            # in this process (one job) a run trains when it is evaluated; workers train ahead
            trained = pool.submit(_train_task, tasks, cost=lambda task: task[0].cost) if self.jobs > 1 else None
            self.references()
            for i, (setting, seed) in enumerate(tasks):
                if trained is not None:
                    trained[i].result()
                self.evaluate_run(setting, seed)  # loads the worker's cached generator

    def header(self) -> dict:
        prompts = self.stages.prompts
        phrasings = {split: prompts.count(split) for split in ("seen", "unseen")} if prompts.kind == "text" else {"seen": prompts.count()}
        return {"dataset": self.dataset, "fast": self.fast, "config": cfgio.to_dict(self.cfg), "machine": machine(), "date": today(),
                "load": {"start": self.load_start, "end": load_average()}, "train": len(self.stages.data.train_x),
                "heldout": len(self.stages.data.test_x), "prompts": self.cfg.digits.prompts, "phrasings": phrasings, "jobs": self.jobs}


def bench(dataset: str, out: Path, fast: bool = False, overrides: list[str] | None = None, seeds: int | None = None, log=print,
          di_seeds: int | None = None, jobs: int = 1, strong_end: bool = False) -> dict:
    """Run the comparison and write metrics.json, frontiers.png, samples.png, grids/ and report.md
    under ``out``. ``seeds``: per setting; ``di_seeds``: for DI (at least ``seeds``); ``jobs``:
    processes that train the runs; ``strong_end``: also the strong end rerun (:data:`STRONG_END`)."""
    b = Bench(dataset, out, fast, overrides, log, jobs)
    kind = "fast" if fast else "full"
    seeds = list(range(seeds or SEEDS[kind]))
    di = list(range(max(di_seeds or DI_SEEDS[kind], len(seeds))))
    settings = sweep(fast, b.cfg.method) + (strong_end_settings(b.cfg.method) if strong_end else [])
    b.run_all([(s, seed) for s in settings for seed in (di if s.family == "DI" else seeds)])
    extras = measure_floor_and_calibration(b)
    points, comparisons, found = analyse(b.rows)
    total = time.perf_counter() - b.t0
    sample_figure(b.grids, out / "samples.png")
    result = {**b.header(), "strong_end": strong_end, "seeds": seeds, "di_seeds": di, "seconds": {"stages": round(b.t_stages, 1), "total": round(total, 1)}, "rows": b.rows,
              **extras, "comparisons": [{"a": c.a, "b": c.b, "metric": c.metric, "summary": c.summary(), "ranges": c.ranges()} for c in comparisons],
              "claims": found}
    frontier_figure(result, points, comparisons, out / "frontiers.png")
    atomic_write_text(json.dumps(result, indent=2), out / "metrics.json")
    atomic_write_text(render_report(result), out / "report.md")
    return result


def measure_floor_and_calibration(b: Bench) -> dict:
    """Add to every scored row the floor under FID real at its reward and its excess
    (:mod:`didr.experiments.digits.floor`), and to DIDR's rows the beta' on the teacher's samples
    (:mod:`didr.experiments.digits.calibration`); returns the floor along the reward range and the
    tilted rewards at each given beta."""
    b.log("floor under FID real at each run's reward, and calibration")
    floor = OptimumFloor(b.stages, b.evaluate.real_feats, b.evaluate.real_rewards)
    add_floor(b.rows, floor)
    calibration = Calibration(b.teacher_rewards, b.teacher_labels, b.evaluate.real_rewards, b.stages.data.test_y)
    calibration.add(b.rows)
    rewards = [r["reward"] for r in b.rows if r["family"] not in ("real",)]
    grid = torch.linspace(min(rewards), max(rewards), 25).tolist()
    curve = {"reward": grid, **{k: [floor(r)[k] for r in grid] for k in ("opt_fid_real", "floor_fid", "opt_recall", "opt_precision")}}
    return {"floor_curve": curve, "calibration_targets": calibration.targets(given_betas(b.rows))}


def frontier_figure(result: dict, points, comparisons, path: Path) -> None:
    """Every method, each comparison at its own scale with the optimum's FID real as a floor, and calibration."""
    curve = result.get("floor_curve")
    curves = {"fid_real": (curve["reward"], curve["opt_fid_real"], "the optimum of equal reward")} if curve else None
    plot_comparisons(points, comparisons, list(METRICS), path, title=f"didr bench {result['dataset']}: reward against error, "
                     f"{len(result['seeds'])} seeds", log_y=True, references=reference_points(result["rows"]), labels=METRIC_NAMES,
                     calibration=calibration_series(calibrated(result)), curves=curves)


def ablation(dataset: str, out: Path, overrides: list[str] | None = None, seeds: int = 2, log=print, variants: list[Setting] | None = None,
             jobs: int = 1) -> dict:
    """DI alone under each variant of the loop; writes ablation.md and ablation.json."""
    b = Bench(dataset, out, False, overrides, log, jobs)
    variants = variants or ablation_settings(b.cfg.method)
    b.run_all([(s, seed) for s in variants for seed in range(seeds)])
    result = {**b.header(), "seeds": list(range(seeds)), "seconds": round(time.perf_counter() - b.t0, 1), "rows": b.rows,
              "notes": {s.label: s.note for s in variants}}
    atomic_write_text(json.dumps(result, indent=2), out / "ablation.json")
    write_ablation(result, out / "ablation.md")
    return result
