"""The toy's reports: one seed's table of every method against the exact optimum (``report.md``),
and the frontiers' tables and comparisons at equal reward (``frontier.md``)."""

from __future__ import annotations

import numpy as np

from didr.eval.calibration import Calibrated, calibration_table
from didr.eval.frontier import Point, points_table
from didr.eval.report import Provenance, markdown_table, render

#: the single-seed table's columns: metric key, header
FIGURES = [
    ("mean_reward", "mean r"),
    ("frac_positive", "frac past boundary"),
    ("off_data_median", "off-data median (stds)"),
    ("w1_to_pstar", "W1 to p*(beta)"),
    ("beta_equal", "beta' (equal reward)"),
    ("w1_equal", "W1 to p*(beta')"),
    ("mode_tv_equal", "mode TV to p*(beta')"),
    ("off_data_equal", "off-data excess"),
]
ROWS = ["pstar", "q0", "reference_teacher", "initial_generator"]
METRICS = ["w1", "mode_tv", "off_data"]
METRIC_NAMES = {
    "w1": "W1 (sliced in d > 1) to p* of equal reward",
    "mode_tv": "mode weights: TV to p* of equal reward",
    "off_data": "|off-data median - p*'s| (stds), p* of equal reward",
}


def _cell(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.4g}"


def render_report(report: dict) -> str:
    """``report.md`` of ``didr toy``: one seed, every method and the reference rows."""
    res, cfg = report["results"], report["config"]
    exact = res["pstar"]["exact"]
    setup = (f"Reward `{cfg['toy']['reward']}`, beta {cfg['method']['beta']:g}, reference `{cfg['toy']['reference']}`, "
             f"schedule `{cfg['toy']['schedule']}`, {cfg['train']['steps']} generator steps x {cfg['train']['ta_updates']} TA updates, "
             f"batch {cfg['train']['batch_size']}, seed {cfg['train']['seed']} (one seed: no intervals; `didr toy --frontier` gives them).")
    optimum = (f"Exact optimum p* ({report['exact_method']}): mean reward {exact['mean_reward']:.4f}.\n"
               "The pstar row uses exact samples: its distances are the sampling floor. beta' is the temperature whose exact optimum "
               "has the row's mean reward; the last three columns are distances to that optimum (docs/method.md §7).")
    rows = [[name, *(_cell(res[name][k]) for k, _ in FIGURES), res[name].get("train_seconds", "")] for name in [*ROWS, *report["methods"]]]
    table = markdown_table(["row", *(h for _, h in FIGURES), "seconds"], rows)
    prov = Provenance(**report["provenance"]) if report.get("provenance") else None
    calibration = "\n".join(f"- {line[0].upper()}{line[1:]}" for line in calibration_lines(report))
    return render("Toy experiment", prov, [setup, optimum, table, calibration, "![samples](densities.png)"])


#: a DIDR run lands on its beta when its mean reward is within this fraction of p*_beta's
CALIBRATION_TOLERANCE = 0.02


def calibration_lines(report: dict) -> list[str]:
    """For each DIDR method of a ``didr toy`` run: the beta' its mean reward implies against the
    beta it was given, and whether its mean reward is within 2% of p*_beta's."""
    res, beta = report["results"], report["config"]["method"]["beta"]
    target = res["pstar"]["exact"]["mean_reward"]
    lines = []
    for name in report["methods"]:
        if name.split(":")[0] != "didr":
            continue
        r = res[name]
        gap = r["mean_reward"] / target - 1
        lines.append(f"calibration: {name} at beta {beta:g} lands at beta' {r['beta_equal']:.3g}; its mean reward {r['mean_reward']:.3f} is "
                     f"{100 * gap:+.1f}% from p*_beta's {target:.3f} ({'within' if abs(gap) <= CALIBRATION_TOLERANCE else 'not within'} "
                     f"{100 * CALIBRATION_TOLERANCE:g}%).")
    if lines and report["config"]["train"]["steps"] <= BUDGET_NOTE["steps"]:
        lines.append(BUDGET_NOTE["text"])
    return lines


#: what one seed at the fast preset's budget can show (benchmarks/results/toy_calibration.md)
BUDGET_NOTE = {"steps": 600, "text": "One seed at this budget (600 generator steps) lands a few percent either side of p*_beta's reward; "
               "no budget in benchmarks/results/toy_calibration.md (up to 4x the steps, 10 TA updates, a reference trained 4x longer, "
               "the exact reference score) lands every one of 3 seeds within 2%, while each one's mean over the seeds is within 2%."}


def case_text(config: dict) -> str:
    """The data and the reward, in words."""
    toy = config["toy"]
    if toy["ring"]:
        data = f"ring of {toy['ring']} modes, std {toy['ring_std']:g}"
    else:
        means = toy["means"]
        dim = len(means[0]) if isinstance(means[0], list) else 1
        data = f"{len(means)} modes in {dim}-D, stds {min(toy['stds']):g}-{max(toy['stds']):g}" if len(set(toy["stds"])) > 1 \
            else f"{len(means)} modes in {dim}-D, std {toy['stds'][0]:g}"
    return f"{data}; reward {toy['reward']}"


def render_frontier(report: dict, points: list[Point], calibrated: list[Calibrated] | None = None) -> str:
    """``frontier.md``: the setup, the floors, every point and every comparison at equal reward."""
    cfg, floor, exact = report["config"], report["floor"], report["exact"]
    seeds = report["seeds"]
    gaps = [i - e for i, e in zip(floor["initial_off_data_median"], floor["exact_off_data_median"])]
    floor_line = (
        f"Generator floor: the initial (distilled) generator's median off-data distance is "
        f"{', '.join(f'{v:.2f}' for v in floor['initial_off_data_median'])} stds over the seeds, against "
        f"{np.mean(floor['exact_off_data_median']):.2f} for exact samples of q0 (excess {max(gaps):+.2f}; criterion: within {floor['criterion_stds']:g})."
    )
    if not floor["met"]:
        floor_line += " **Criterion not met: every figure below includes this floor.**"
    samp = floor["sampling"]
    setup = (f"Case: {case_text(cfg)}; {len(seeds)} seeds ({', '.join(map(str, seeds))}); {cfg['train']['steps']} generator steps x "
             f"{cfg['train']['ta_updates']} TA updates, batch {cfg['train']['batch_size']}, EMA {cfg['train']['ema_decay']:g}; "
             f"{cfg['toy']['eval_samples']} samples per run.\n"
             f"Exact optimum ({exact['method']}): at beta {exact['beta']:g} its mean reward is {exact['mean_reward']:.4g} "
             f"(q0: {exact['q0_mean_reward']:.4g}).")
    timing = (f"This invocation: {report.get('seconds', 0):.0f} s wall (stages {report.get('stage_seconds', 0):.0f} s; "
              f"{report.get('runs_trained', 0)} runs trained, the rest cached). The {len(report['points']) * len(seeds)} runs took "
              f"{report['run_seconds']:.0f} s of compute in all, one process each, when they ran.")
    floors = (f"{floor_line}\nSampling floor (exact samples of p*, {cfg['toy']['eval_samples']} of them): W1 {samp['w1']:.3g}, "
              f"mode TV {samp['mode_tv']:.3g}, off-data {samp['off_data']:.3g}.")
    metrics = ("Each run's error is measured against the exact optimum p*_beta' with the run's own mean reward "
               "(beta' fitted per run); the optimum scores 0. w1: W1 (sliced over 64 directions in d > 1); mode_tv: total "
               "variation between the fractions of samples nearest each mode and p*'s mode weights; off_data: |median distance "
               "to the nearest mode - exact samples'|, in mode stds (signed in frontier.json: above 0, the samples leave the data). "
               "Mean ± 95% t-interval over seeds.")
    decision = next((c["decision"] for c in report["comparisons"] if c.get("decision")), "")
    comparisons = "\n".join(["## Comparisons at equal reward (paired by seed)", "",
                             "error(a) - error(b) along the reward range that every seed's two frontiers reach; negative: a is closer to the optimum. "
                             + decision, "", *(f"- {c['summary']}" for c in report["comparisons"])])
    prov = Provenance(**report["provenance"]) if report.get("provenance") else None
    if report.get("rerendered"):
        timing += (f"\nComparisons, calibration and figures re-rendered on {report['rerendered']} from the runs' recorded figures "
                   "(frontier.json) with the current verdict procedure; the runs are those of the date above.")
    return render("Toy frontiers: reward against error at equal reward", prov,
                  [setup, timing, floors, metrics, "\n".join(points_table(points, METRICS)), calibration_section(calibrated or []), comparisons,
                   "![frontier](frontier.png)\n\n![samples](samples.png)"])


def calibration_section(calibrated: list[Calibrated]) -> str:
    """Each DIDR run's beta' (the exact optimum's with the run's mean reward) against the beta it was given."""
    if not calibrated:
        return ""
    return "\n".join(["## Calibration: the beta each DIDR run was given against the beta' its mean reward implies", "",
                      "A calibrated run has beta' = beta: its mean reward is the exact optimum's at its own beta (right panel of frontier.png).", "",
                      calibration_table(calibrated, "p*_beta's mean reward")])
