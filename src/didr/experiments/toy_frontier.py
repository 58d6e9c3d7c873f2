"""Reward-error frontiers on the toy: each method over its strength, several seeds, compared at
equal reward (method.md §7).

    didr toy --frontier --out runs/frontier --jobs 2                      # default mixture, 3 seeds
    didr toy --frontier --ring 8 --set toy.ring_std=0.05 --reward linear:1 --jobs 2 --out runs/ring
    didr toy --frontier --preset smoke --jobs 2 --out runs/smoke          # the smoke version, minutes
    didr toy --frontier --methods didr,didr:drs=exact,dipp --strengths dipp=0.05,0.1,0.2 --out ...

This is a layer above the one training loop: a run is :func:`didr.experiments.toy.align` with
one method setting and one seed. Seed s means the stages (reference, initial generator) trained
with seed s and every method's alignment run with seed s, so seeds pair across methods, as
:func:`didr.eval.frontier.compare_at_equal_reward` assumes. Stages are cached per seed and every
finished run is cached with its samples and figures, so a rerun, or a frontier that was stopped,
resumes where it was. ``jobs`` independent runs go to that many processes of one torch thread each.

Each run's error is measured against the exact optimum with the same mean reward, p*_beta'
(:func:`didr.eval.toy_metrics.error_at_equal_reward`): W1 (sliced W1 in d > 1), the mode
weights' total variation, and the off-data error (see :func:`error`). The optimum scores 0 on all three.

Files under OUT: ``stages/seed<s>/``, ``runs/<method>/<setting>/seed<s>.safetensors`` (samples
(N, d), figures in the metadata), ``frontier.json``, ``frontier.md``, ``frontier.png``, ``samples.png``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from didr.config import from_dict, to_dict
from didr.diffusion.optimum import exact_optimum
from didr.errors import ConfigError
from didr.eval import toy_metrics as tm
from didr.eval.frontier import Point, compare_at_equal_reward, plot_frontiers, points_table
from didr.experiments.config import RunConfig
from didr.experiments.stages import digest, load_stage, save_stage, stage_metadata
from didr.experiments.toy import align, generate, prepare_stages
from didr.objectives.config import MethodConfig, endpoint_alpha
from didr.rewards.toy import parse_toy_reward

#: the field that sets each method's reward strength (methods without one give a single point)
STRENGTH_FIELD = {"didr": "beta", "dipp": "alpha", "dmdr": "alpha", "refl": "refl_reg"}
#: DIDR's default temperatures, as multiples of the configured beta
BETA_FACTORS = (0.5, 1.0, 2.0, 4.0)
#: defaults where no derivation exists: ReFL's regulariser weights and DMD's endpoint weights
DEFAULT_GRIDS = {"refl": [0.1, 0.3, 1.0, 3.0], "dmdr": [0.03, 0.1, 0.3, 1.0]}
METRICS = ["w1", "mode_tv", "off_data"]
METRIC_NAMES = {
    "w1": "W1 (sliced in d > 1) to p* of equal reward",
    "mode_tv": "mode weights: TV to p* of equal reward",
    "off_data": "|off-data median - p*'s| (stds), p* of equal reward",
}
#: the generator can draw the data when its initial samples' median off-data distance is within
#: this many mode stds of exact samples' (method.md §7; otherwise every figure carries that floor)
FLOOR_STDS = 2.0


@dataclass(frozen=True, eq=False)  # hashed by identity: a key of the frontier's tables
class Setting:
    """One point of a frontier: a method spec (``didr``, ``didr:drs=exact``) at one strength."""

    label: str
    method: MethodConfig
    field: str | None
    value: float | None

    @property
    def name(self) -> str:
        return "-" if self.field is None else f"{self.field}={self.value:g}"

    def slug(self) -> str:
        return self.label.replace(":", "_").replace("=", "-") + "/" + self.name.replace("=", "-")


def default_strengths(method: MethodConfig, schedule) -> list[float]:
    """DIDR: beta x (1/2, 1, 2, 4). DI++: for each of those betas, the endpoint weight with the
    same average push (M13), a log-spaced grid around the useful range. Others: DEFAULT_GRIDS."""
    betas = [method.beta * f for f in BETA_FACTORS]
    if method.name == "didr":
        return betas
    if method.name == "dipp":
        return [round(endpoint_alpha(replace(method, beta=b, alpha=None), schedule), 4) for b in betas]
    return list(DEFAULT_GRIDS.get(method.name, []))


def frontier_settings(cfg: RunConfig, specs: list[tuple[str, MethodConfig]], strengths: dict[str, list[float]]) -> list[Setting]:
    """Every (method spec, strength). ``strengths`` maps a spec label, or a method name (every
    spec of that method), to its grid; the rest get :func:`default_strengths`."""
    from didr.diffusion.schedules import make_schedule

    labels = {label for label, _ in specs} | {m.name for _, m in specs}
    for key in strengths:
        if key not in labels:
            raise ConfigError(f"--strengths {key}: no such method in --methods ({', '.join(label for label, _ in specs)})")
    schedule = make_schedule(cfg.toy.schedule)
    out: list[Setting] = []
    for label, method in specs:
        field = STRENGTH_FIELD.get(method.name)
        if field is None:
            out.append(Setting(label, method, None, None))
            continue
        grid = strengths.get(label, strengths.get(method.name)) or default_strengths(method, schedule)
        for v in grid:
            if field == "beta" and not v > 0 or v < 0:
                raise ConfigError(f"--strengths {label}: {field} must be {'> 0' if field == 'beta' else '>= 0'}, got {v:g}")
            out.append(Setting(label, replace(method, **{field: float(v)}), field, float(v)))
    return out


# --- one stage, one run: what a worker process does ---------------------------------------------

_OPTIMA: dict[str, object] = {}


def _optimum(cfg: RunConfig):
    """The exact optimum family, built once per process for a toy configuration."""
    key = digest(asdict(cfg.toy))
    if key not in _OPTIMA:
        _OPTIMA.clear()
        _OPTIMA[key] = exact_optimum(cfg.toy.mixture(), parse_toy_reward(cfg.toy.reward))
    return _OPTIMA[key]


def _init_worker() -> None:
    torch.set_num_threads(1)


def stage_task(config: dict, seed: int, out_dir: str) -> dict:
    """Prepare seed's stages (cached) and measure the initial generator's floor."""
    t0 = time.perf_counter()
    cfg = from_dict(RunConfig, config)
    stages = prepare_stages(cfg.toy, seed, Path(out_dir) / "stages", progress=False)
    optimum, reward = _optimum(cfg), parse_toy_reward(cfg.toy.reward)
    n, mix = cfg.toy.eval_samples, stages.mixture
    x = generate(stages.generator, n, mix.dim, seed + 5)
    exact = mix.sample(n, torch.Generator().manual_seed(seed + 7))
    return {
        "seed": seed,
        "initial_generator": _figures(x, optimum, reward),
        "q0_off_data_median": tm.off_data_median(exact, mix),
        "initial_off_data_median": tm.off_data_median(x, mix),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _figures(x, optimum, reward) -> dict:
    return {
        "mean_reward": tm.mean_reward(x, reward),
        "frac_positive": tm.frac_positive(x, reward),
        "off_data_median": tm.off_data_median(x, optimum.mixture),
        **tm.error_at_equal_reward(x, optimum, reward),
    }


def run_key(cfg: RunConfig, method: MethodConfig, seed: int) -> str:
    """What decides a run's result: the toy, the loop's settings, the method, and the seed."""
    return digest({"toy": asdict(cfg.toy), "train": {**asdict(cfg.train), "seed": seed, "progress": False}, "method": asdict(method)})


def run_path(out_dir: Path, setting: Setting, seed: int) -> Path:
    return out_dir / "runs" / setting.slug() / f"seed{seed}.safetensors"


def cached_run(out_dir: Path, cfg: RunConfig, setting: Setting, seed: int) -> dict | None:
    """The figures of a finished run made with these settings, or None."""
    path = run_path(out_dir, setting, seed)
    if not path.is_file():
        return None
    try:
        meta = stage_metadata(path)
    except Exception:  # an unreadable file is a run to do again (writes are atomic, so this is rare)
        return None
    return json.loads(meta["row"]) if meta.get("key") == run_key(cfg, setting.method, seed) else None


def run_task(config: dict, method: dict, label: str, name: str, path: str, seed: int, out_dir: str) -> dict:
    """Align one setting at one seed through the training loop, measure it, and cache it at ``path``."""
    cfg = from_dict(RunConfig, config)
    mcfg = from_dict(MethodConfig, method, "method")
    t0 = time.perf_counter()
    stages = prepare_stages(cfg.toy, seed, Path(out_dir) / "stages", progress=False)
    reward = parse_toy_reward(cfg.toy.reward)
    train = replace(cfg.train, seed=seed, progress=False)
    generator = align(stages, mcfg, train, reward, desc=f"{label} {name} seed {seed}")
    train_seconds = time.perf_counter() - t0
    x = generate(generator, cfg.toy.eval_samples, stages.mixture.dim, seed + 5)
    row = {**_figures(x, _optimum(cfg), reward), "train_seconds": round(train_seconds, 2),
           "eval_seconds": round(time.perf_counter() - t0 - train_seconds, 2), "seed": seed}
    if mcfg.name in ("dipp", "dmdr"):
        row["alpha"] = endpoint_alpha(mcfg, stages.schedule)
    save_stage(Path(path), run_key(cfg, mcfg, seed), {"samples": x.float().contiguous()}, row=json.dumps(row))
    return row


# --- the frontier ---------------------------------------------------------------------------------


def _pool(jobs: int):
    if jobs <= 1:
        return None
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)


def _map(pool, fn, tasks: list[tuple], describe, log) -> list:
    """Run ``fn(*task)`` for every task (in ``pool`` if any), logging each as it finishes."""
    results: list = [None] * len(tasks)
    if pool is None:
        for i, task in enumerate(tasks):
            results[i] = fn(*task)
            log(f"[{i + 1}/{len(tasks)}] {describe(task, results[i])}")
        return results
    futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
    for done, fut in enumerate(as_completed(futures), 1):
        i = futures[fut]
        results[i] = fut.result()
        log(f"[{done}/{len(tasks)}] {describe(tasks[i], results[i])}")
    return results


def run_frontier(
    cfg: RunConfig,
    specs: list[tuple[str, MethodConfig]],
    out_dir: Path,
    *,
    seeds: list[int],
    strengths: dict[str, list[float]] | None = None,
    jobs: int = 1,
    command: str = "",
    log=None,
) -> dict:
    """Train every setting at every seed (cached), then build the frontiers and compare them."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    settings = frontier_settings(cfg, specs, strengths or {})  # refuse bad grids before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    t0 = time.perf_counter()
    todo = [(s, seed) for s in settings for seed in seeds if cached_run(out_dir, cfg, s, seed) is None]
    log(f"frontier: {len(settings)} settings x {len(seeds)} seeds; {len(settings) * len(seeds) - len(todo)} cached, "
        f"{len(todo)} to run in {max(jobs, 1)} process(es)")
    pool = _pool(jobs)
    if pool is None:
        _init_worker()  # runs in this process: one torch thread, like every worker
    try:
        stage_rows = _map(pool, stage_task, [(config, seed, str(out_dir)) for seed in seeds],
                          lambda task, r: f"stages seed {task[1]}: initial generator off-data median {r['initial_off_data_median']:.2f} stds "
                                          f"(exact {r['q0_off_data_median']:.2f}), {r['seconds']:.0f} s", log)
        stage_seconds = time.perf_counter() - t0
        tasks = [(config, to_dict(s.method), s.label, s.name, str(run_path(out_dir, s, seed)), seed, str(out_dir)) for s, seed in todo]
        _map(pool, run_task, tasks, lambda task, r: f"{task[2]} {task[3]} seed {task[5]}: reward {r['mean_reward']:.3f}, "
                                                    f"W1 {r['w1_equal']:.3f}, off-data {r['off_data_equal']:+.2f} ({r['train_seconds']:.0f} s)", log)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    rows = {(s, seed): cached_run(out_dir, cfg, s, seed) for s in settings for seed in seeds}
    report = build_report(cfg, settings, seeds, rows, stage_rows)
    report.update(command=command, jobs=jobs, seconds=round(time.perf_counter() - t0, 1), stage_seconds=round(stage_seconds, 1),
                  runs_trained=len(todo), machine=_machine())
    write_outputs(report, settings, seeds, out_dir)
    return report


def _machine() -> str:
    return f"{platform.machine()} CPU, one torch thread per process, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def error(row: dict, metric: str) -> float:
    """A run's error on ``metric`` at equal reward; the off-data figure counts either direction."""
    value = row[f"{metric}_equal"]
    return abs(value) if metric == "off_data" else value


def build_report(cfg: RunConfig, settings: list[Setting], seeds: list[int], rows: dict, stage_rows: list[dict]) -> dict:
    optimum = _optimum(cfg)
    reward = parse_toy_reward(cfg.toy.reward)
    beta = cfg.method.beta
    floor_gap = [r["initial_off_data_median"] - r["q0_off_data_median"] for r in stage_rows]
    points = [
        Point(s.label, s.name, [rows[s, seed]["mean_reward"] for seed in seeds],
              {m: [error(rows[s, seed], m) for seed in seeds] for m in METRICS}, list(seeds))
        for s in settings
    ]
    labels = list(dict.fromkeys(s.label for s in settings))
    didr = [lab for lab in labels if lab.split(":")[0] == "didr"]
    others = [lab for lab in labels if lab.split(":")[0] in ("dipp", "dmdr", "refl")]
    comparisons = []
    for a in didr:
        for b in others:
            for m in METRICS:
                cmp = compare_at_equal_reward(points, a, b, m)
                comparisons.append({"a": a, "b": b, "metric": m, "summary": cmp.summary(), "ranges": cmp.ranges(),
                                    "rows": [asdict(r) for r in cmp.rows]})
    n = cfg.toy.eval_samples
    return {
        "config": to_dict(cfg),
        "seeds": list(seeds),
        "exact": {"method": optimum.method, "beta": beta, **tm.exact_figures(optimum, beta),
                  "q0_mean_reward": optimum.mean_reward(math.inf)},
        "floor": {
            "initial_generator": {str(r["seed"]): r["initial_generator"] for r in stage_rows},
            "initial_off_data_median": [r["initial_off_data_median"] for r in stage_rows],
            "exact_off_data_median": [r["q0_off_data_median"] for r in stage_rows],
            "criterion_stds": FLOOR_STDS,
            "met": all(g <= FLOOR_STDS for g in floor_gap),
            "sampling": {k: abs(v) for k, v in tm.sampling_floor(optimum, reward, beta, n).items()},
        },
        "points": [{"method": p.method, "setting": p.setting, "seeds": p.seeds, "reward": p.reward.tolist(),
                    "errors": {k: v.tolist() for k, v in p.errors.items()},
                    "beta_equal": [rows[s, seed]["beta_equal"] for seed in seeds],
                    "off_data_signed": [rows[s, seed]["off_data_equal"] for seed in seeds],
                    "seconds": [rows[s, seed]["train_seconds"] + rows[s, seed]["eval_seconds"] for seed in seeds]}
                   for p, s in zip(points, settings)],
        "run_seconds": round(sum(r["train_seconds"] + r["eval_seconds"] for r in rows.values()), 1),
        "comparisons": comparisons,
    }


def report_points(report: dict) -> list[Point]:
    return [Point(p["method"], p["setting"], p["reward"], p["errors"], p["seeds"]) for p in report["points"]]


def write_outputs(report: dict, settings: list[Setting], seeds: list[int], out_dir: Path) -> None:
    from didr.train.checkpoint import atomic_write_text

    points = report_points(report)
    floor = report["floor"]["sampling"]
    title = f"{_case(report['config'])}; {len(seeds)} seeds; exact optimum: 0 on every axis (dashed: exact samples' floor)"
    plot_frontiers(points, METRICS, out_dir / "frontier.png", title=title, floors=floor, labels=METRIC_NAMES)
    plot_frontier_samples(report, settings, seeds[0], out_dir / "samples.png")
    atomic_write_text(json.dumps(report, indent=1, default=_json_default), out_dir / "frontier.json")
    atomic_write_text(render_frontier(report), out_dir / "frontier.md")


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(type(v))


def _case(config: dict) -> str:
    toy = config["toy"]
    if toy["ring"]:
        data = f"ring of {toy['ring']} modes, std {toy['ring_std']:g}"
    else:
        means = toy["means"]
        dim = len(means[0]) if isinstance(means[0], list) else 1
        data = f"{len(means)} modes in {dim}-D, stds {min(toy['stds']):g}-{max(toy['stds']):g}" if len(set(toy["stds"])) > 1 \
            else f"{len(means)} modes in {dim}-D, std {toy['stds'][0]:g}"
    return f"{data}; reward {toy['reward']}"


def render_frontier(report: dict) -> str:
    cfg, floor, exact = report["config"], report["floor"], report["exact"]
    seeds = report["seeds"]
    points = report_points(report)
    gaps = [i - e for i, e in zip(floor["initial_off_data_median"], floor["exact_off_data_median"])]
    floor_line = (
        f"Generator floor: the initial (distilled) generator's median off-data distance is "
        f"{', '.join(f'{v:.2f}' for v in floor['initial_off_data_median'])} stds over the seeds, against "
        f"{np.mean(floor['exact_off_data_median']):.2f} for exact samples of q0 (excess {max(gaps):+.2f}; criterion: within {floor['criterion_stds']:g})."
    )
    if not floor["met"]:
        floor_line += " **Criterion not met: every figure below includes this floor.**"
    samp = floor["sampling"]
    lines = [
        "# Toy frontiers: reward against error at equal reward",
        "",
        f"Case: {_case(cfg)}; {len(seeds)} seeds ({', '.join(map(str, seeds))}); {cfg['train']['steps']} generator steps x "
        f"{cfg['train']['ta_updates']} TA updates, batch {cfg['train']['batch_size']}, EMA {cfg['train']['ema_decay']:g}; "
        f"{cfg['toy']['eval_samples']} samples per run.",
        f"Exact optimum ({exact['method']}): at beta {exact['beta']:g} its mean reward is {exact['mean_reward']:.4g} "
        f"(q0: {exact['q0_mean_reward']:.4g}).",
        "",
        f"Command: `{report.get('command', '')}`  ",
        f"Machine: {report.get('machine', '')}; {report.get('jobs', 1)} process(es). This invocation: {report.get('seconds', 0):.0f} s wall "
        f"(stages {report.get('stage_seconds', 0):.0f} s; {report.get('runs_trained', 0)} runs trained, the rest cached). "
        f"The {len(report['points']) * len(seeds)} runs took {report['run_seconds']:.0f} s of compute in all, one process each, when they ran.",
        "",
        floor_line,
        f"Sampling floor (exact samples of p*, {cfg['toy']['eval_samples']} of them): W1 {samp['w1']:.3g}, mode TV {samp['mode_tv']:.3g}, "
        f"off-data {samp['off_data']:.3g}.",
        "",
        "Each run's error is measured against the exact optimum p*_beta' with the run's own mean reward "
        "(beta' fitted per run); the optimum scores 0. w1: W1 (sliced over 64 directions in d > 1); mode_tv: total "
        "variation between the fractions of samples nearest each mode and p*'s mode weights; off_data: |median distance "
        "to the nearest mode - exact samples'|, in mode stds (signed in frontier.json: above 0, the samples leave the data). "
        "Mean ± 95% t-interval over seeds.",
        "",
        *points_table(points, METRICS),
        "",
        "## Comparisons at equal reward (paired by seed)",
        "",
        "error(a) - error(b) along the reward range both frontiers reach, for every seed; negative: a is closer to the optimum.",
        "",
    ]
    for c in report["comparisons"]:
        lines.append(f"- {c['summary']}")
    lines += ["", "![frontier](frontier.png)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def plot_frontier_samples(report: dict, settings: list[Setting], seed: int, path: Path) -> Path:
    """One panel per method: seed ``seed``'s samples at the setting whose mean reward is nearest
    the exact optimum's at the configured beta, over the data's modes."""
    from didr.eval.toy_plots import plot_samples

    out_dir = path.parent
    cfg = from_dict(RunConfig, report["config"])
    target = report["exact"]["mean_reward"]
    chosen: dict[str, tuple[float, Setting]] = {}
    for s in settings:
        row = cached_run(out_dir, cfg, s, seed)
        gap = abs(row["mean_reward"] - target)
        if s.label not in chosen or gap < chosen[s.label][0]:
            chosen[s.label] = (gap, s)
    samples = {f"{label} {s.name}": load_stage(run_path(out_dir, s, seed), run_key(cfg, s.method, seed))["samples"].numpy()
               for label, (_, s) in chosen.items()}
    optimum = _optimum(cfg)
    return plot_samples(samples, optimum, cfg.method.beta, path, title=f"seed {seed}: the setting nearest p*'s reward {target:.3g}")
