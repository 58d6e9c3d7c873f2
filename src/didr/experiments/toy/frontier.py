"""Reward-error frontiers on the toy: each method over its strength, several seeds, compared at
equal reward (docs/method.md §7).

    didr toy --frontier --out runs/frontier --jobs 2                      # default mixture, 3 seeds
    didr toy --frontier --ring 8 --set toy.ring_std=0.05 --reward linear:1 --jobs 2 --out runs/ring
    didr toy --frontier --preset smoke --jobs 2 --out runs/smoke          # the smoke version, minutes
    didr toy --frontier --methods didr,didr:drs=exact,dipp --strengths dipp=0.05,0.1,0.2 --out ...

A layer above the one training loop: a run is :func:`didr.experiments.toy.stages.align` with one
:class:`didr.experiments.sweep.Setting` and one seed. Seed s means the stages (reference, initial
generator) trained with seed s and every method's alignment run with seed s, so seeds pair across
methods, as :func:`didr.eval.frontier.compare_at_equal_reward` assumes. Stages are cached per seed
and every finished run is cached with its samples and figures, so a rerun, or a frontier that was
stopped, resumes where it was.

Each run's error is measured against the exact optimum with the same mean reward, p*_beta'
(:func:`didr.eval.toy_metrics.error_at_equal_reward`): W1 (sliced W1 in d > 1), the mode
weights' total variation, and the off-data error (see :func:`error`). The optimum scores 0 on all three.

Files under OUT: ``stages/seed<s>/``, ``runs/<method>/<setting>/seed<s>.safetensors`` (samples
(N, d), figures in the metadata), ``frontier.json``, ``frontier.md``, ``frontier.png``, ``samples.png``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from didr.config import from_dict, to_dict
from didr.diffusion.optimum import exact_optimum
from didr.diffusion.schedules import make_schedule
from didr.errors import ConfigError
from didr.eval import toy_metrics as tm
from didr.eval.calibration import Calibrated, beta_of, calibration_series
from didr.eval.frontier import PROCEDURE, Point, compare_family
from didr.eval.frontier_plots import plot_comparisons
from didr.eval.report import Provenance
from didr.eval.toy_plots import plot_samples
from didr.experiments.config import RunConfig, ToyConfig
from didr.experiments.stages import load_stage, save_stage, stage_metadata
from didr.experiments.sweep import STRENGTH_FIELD, RunPool, Setting, at_strength, toy_strengths
from didr.experiments.toy.report import METRIC_NAMES, METRICS, case_text, render_frontier
from didr.experiments.toy.stages import align, generate, prepare_stages
from didr.files import atomic_write_text, digest
from didr.objectives.config import MethodConfig, endpoint_alpha
from didr.rewards.toy import parse_toy_reward
from didr.runtime import today

#: the generator can draw the data when its initial samples' median off-data distance is within
#: this many mode stds of exact samples' (docs/method.md §7; otherwise every figure carries that floor)
FLOOR_STDS = 2.0


def frontier_settings(cfg: RunConfig, specs: list[tuple[str, MethodConfig]], strengths: dict[str, list[float]]) -> list[Setting]:
    """Every (method spec, strength). ``strengths`` maps a spec label, or a method name (every
    spec of that method), to its grid; the rest get the toy's default grid."""
    labels = {label for label, _ in specs} | {m.name for _, m in specs}
    for key in strengths:
        if key not in labels:
            raise ConfigError(f"--strengths {key}: no such method in --methods ({', '.join(label for label, _ in specs)})")
    schedule = make_schedule(cfg.toy.schedule)
    out: list[Setting] = []
    for label, method in specs:
        field = STRENGTH_FIELD.get(method.name)
        if field is None:
            out.append(Setting(label, "-", method))
            continue
        grid = strengths.get(label, strengths.get(method.name)) or toy_strengths(method, schedule)
        for v in grid:
            out.append(Setting(label, f"{field}={float(v):g}", at_strength(method, v, f"--strengths {label}")))
    return out


def slug(setting: Setting) -> str:
    return setting.family.replace(":", "_").replace("=", "-") + "/" + setting.setting.replace("=", "-")


# --- one stage, one run: what a worker process does ---------------------------------------------

_OPTIMA: dict[str, object] = {}


def optimum_of(cfg: RunConfig):
    """The exact optimum family, built once per process for a toy configuration."""
    key = digest(asdict(cfg.toy))
    if key not in _OPTIMA:
        _OPTIMA.clear()
        _OPTIMA[key] = exact_optimum(cfg.toy.mixture(), parse_toy_reward(cfg.toy.reward))
    return _OPTIMA[key]


def one_thread() -> None:
    torch.set_num_threads(1)


def stage_task(config: dict, seed: int, out_dir: str) -> dict:
    """Prepare seed's stages (cached) and measure the initial generator's floor."""
    t0 = time.perf_counter()
    cfg = from_dict(RunConfig, config)
    stages = prepare_stages(cfg.toy, seed, Path(out_dir) / "stages", progress=False)
    optimum, reward = optimum_of(cfg), parse_toy_reward(cfg.toy.reward)
    n, mix = cfg.toy.eval_samples, stages.mixture
    x = generate(stages.generator, n, mix.dim, seed + 5)
    exact = mix.sample(n, torch.Generator().manual_seed(seed + 7))
    return {
        "seed": seed,
        "initial_generator": figures(x, optimum, reward),
        "q0_off_data_median": tm.off_data_median(exact, mix),
        "initial_off_data_median": tm.off_data_median(x, mix),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def figures(x, optimum, reward) -> dict:
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
    return out_dir / "runs" / slug(setting) / f"seed{seed}.safetensors"


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


def run_task(config: dict, method: dict, label: str, path: str, seed: int, out_dir: str) -> dict:
    """Align one setting at one seed through the training loop, measure it, and cache it at ``path``."""
    cfg = from_dict(RunConfig, config)
    mcfg = from_dict(MethodConfig, method, "method")
    t0 = time.perf_counter()
    stages = prepare_stages(cfg.toy, seed, Path(out_dir) / "stages", progress=False)
    reward = parse_toy_reward(cfg.toy.reward)
    train = replace(cfg.train, seed=seed, progress=False)
    generator = align(stages, mcfg, train, reward, desc=f"{label} seed {seed}")
    train_seconds = time.perf_counter() - t0
    x = generate(generator, cfg.toy.eval_samples, stages.mixture.dim, seed + 5)
    row = {**figures(x, optimum_of(cfg), reward), "train_seconds": round(train_seconds, 2),
           "eval_seconds": round(time.perf_counter() - t0 - train_seconds, 2), "seed": seed}
    if mcfg.name in ("dipp", "dmdr"):
        row["alpha"] = endpoint_alpha(mcfg, stages.schedule)
    save_stage(Path(path), run_key(cfg, mcfg, seed), {"samples": x.float().contiguous()}, row=json.dumps(row))
    return row


# --- the frontier ---------------------------------------------------------------------------------


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
    if jobs <= 1:
        one_thread()  # runs in this process: one torch thread, like every worker
    with RunPool(jobs, one_thread) as pool:
        stage_rows = pool.map(stage_task, [(config, seed, str(out_dir)) for seed in seeds],
                              lambda task, r: f"stages seed {task[1]}: initial generator off-data median {r['initial_off_data_median']:.2f} stds "
                                              f"(exact {r['q0_off_data_median']:.2f}), {r['seconds']:.0f} s", log)
        stage_seconds = time.perf_counter() - t0
        tasks = [(config, to_dict(s.method), s.label, str(run_path(out_dir, s, seed)), seed, str(out_dir)) for s, seed in todo]
        pool.map(run_task, tasks, lambda task, r: f"{task[2]} seed {task[4]}: reward {r['mean_reward']:.3f}, "
                                                  f"W1 {r['w1_equal']:.3f}, off-data {r['off_data_equal']:+.2f} ({r['train_seconds']:.0f} s)", log)
    rows = {(s, seed): cached_run(out_dir, cfg, s, seed) for s in settings for seed in seeds}
    report = build_report(cfg, settings, seeds, rows, stage_rows)
    provenance = Provenance.here(command, f"{jobs} process(es) of one torch thread")
    report.update(command=command, jobs=jobs, seconds=round(time.perf_counter() - t0, 1), stage_seconds=round(stage_seconds, 1),
                  runs_trained=len(todo), provenance=provenance.to_dict())
    write_outputs(report, settings, seeds, out_dir)
    return report


def error(row: dict, metric: str) -> float:
    """A run's error on ``metric`` at equal reward; the off-data figure counts either direction."""
    value = row[f"{metric}_equal"]
    return abs(value) if metric == "off_data" else value


def build_report(cfg: RunConfig, settings: list[Setting], seeds: list[int], rows: dict, stage_rows: list[dict]) -> dict:
    optimum = optimum_of(cfg)
    reward = parse_toy_reward(cfg.toy.reward)
    beta = cfg.method.beta
    floor_gap = [r["initial_off_data_median"] - r["q0_off_data_median"] for r in stage_rows]
    points = [
        Point(s.family, s.setting, [rows[s, seed]["mean_reward"] for seed in seeds],
              {m: [error(rows[s, seed], m) for seed in seeds] for m in METRICS}, list(seeds))
        for s in settings
    ]
    comparisons = [comparison_record(c) for c in compare_pairs(points)]
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


def compare_pairs(points: list[Point]):
    """Every DIDR family against every baseline on every metric, verdicts declared over them all
    together (:data:`didr.eval.frontier.PROCEDURE`)."""
    families = list(dict.fromkeys(p.method for p in points))
    didr = [f for f in families if f.split(":")[0] == "didr"]
    others = [f for f in families if f.split(":")[0] in ("dipp", "dmdr", "refl")]
    return compare_family(points, [(a, b) for a in didr for b in others], METRICS, procedure=PROCEDURE)


def comparison_record(c) -> dict:
    return {"a": c.a, "b": c.b, "metric": c.metric, "summary": c.summary(), "ranges": c.ranges(), "rows": [asdict(r) for r in c.rows],
            "decision": c.decision.text() if c.decision else ""}


def report_points(report: dict) -> list[Point]:
    return [Point(p["method"], p["setting"], p["reward"], p["errors"], p["seeds"]) for p in report["points"]]


def calibration(report: dict) -> list[Calibrated]:
    """Each DIDR setting's beta against its seeds' beta' (the exact optimum's, docs/method.md §7)."""
    toy = report["config"]["toy"]  # the mixture and the reward alone: older reports hold fields since renamed elsewhere
    fields = {k: toy[k] for k in ("means", "stds", "weights", "ring", "ring_std", "reward") if k in toy}
    optimum = optimum_of(RunConfig(toy=from_dict(ToyConfig, fields, "toy")))
    out = []
    for p in report["points"]:
        if p["method"].split(":")[0] == "didr":
            beta = beta_of(p["setting"])
            out.append(Calibrated(p["method"], p["setting"], beta, [float(b) for b in p["beta_equal"]], p["reward"], optimum.mean_reward(beta)))
    return out


def write_outputs(report: dict, settings: list[Setting] | None, seeds: list[int], out_dir: Path) -> None:
    """frontier.png (every method, each comparison at its own scale, calibration), frontier.json,
    frontier.md and, where the runs are cached (``settings`` given), samples.png."""
    points = report_points(report)
    floor = report["floor"]["sampling"]
    calibrated = calibration(report)
    title = f"{case_text(report['config'])}; {len(seeds)} seeds; exact optimum: 0 on every axis (dashed: exact samples' floor)"
    plot_comparisons(points, compare_pairs(points), METRICS, out_dir / "frontier.png", title=title, floors=floor, labels=METRIC_NAMES,
                     calibration=calibration_series(calibrated))
    if settings is not None:
        plot_frontier_samples(report, settings, seeds[0], out_dir / "samples.png")
    atomic_write_text(json.dumps(report, indent=1, default=_json_default), out_dir / "frontier.json")
    atomic_write_text(render_frontier(report, points, calibrated), out_dir / "frontier.md")


def rerender(out_dir: Path) -> dict:
    """Rewrite a recorded frontier's comparisons (frontier.json), frontier.md and frontier.png from
    its runs' recorded figures, with the current verdict procedure and calibration; samples.png,
    which needs the runs themselves, is kept. The report keeps its runs' command, machine and date."""
    report = json.loads((out_dir / "frontier.json").read_text())
    if "provenance" not in report:  # recorded before reports carried one: its command and machine line
        machine_line = report.get("machine", "")
        report["provenance"] = Provenance(report["command"], machine_line, machine_line.rsplit(", ", 1)[-1], f"{report.get('jobs', 1)} process(es)").to_dict()
    report["comparisons"] = [comparison_record(c) for c in compare_pairs(report_points(report))]
    report["rerendered"] = today()
    write_outputs(report, None, report["seeds"], out_dir)
    return report


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(type(v))


def plot_frontier_samples(report: dict, settings: list[Setting], seed: int, path: Path) -> Path:
    """One panel per method: seed ``seed``'s samples at the setting whose mean reward is nearest
    the exact optimum's at the configured beta, over the data's modes."""
    out_dir = path.parent
    cfg = from_dict(RunConfig, report["config"])
    target = report["exact"]["mean_reward"]
    chosen: dict[str, tuple[float, Setting]] = {}
    for s in settings:
        row = cached_run(out_dir, cfg, s, seed)
        gap = abs(row["mean_reward"] - target)
        if s.family not in chosen or gap < chosen[s.family][0]:
            chosen[s.family] = (gap, s)
    samples = {f"{family} {s.setting}": load_stage(run_path(out_dir, s, seed), run_key(cfg, s.method, seed))["samples"].numpy()
               for family, (_, s) in chosen.items()}
    return plot_samples(samples, optimum_of(cfg), cfg.method.beta, path, title=f"seed {seed}: the setting nearest p*'s reward {target:.3g}")
