"""The report's sections on fidelity at equal reward and on calibration, computed from a run's
recorded rows (``metrics.json``): the floor under FID real and each setting's excess over it
(:mod:`didr.experiments.digits.floor`), what DIDR's deficit at the strong end consists of, and
each DIDR run's beta' against its beta (:mod:`didr.experiments.digits.calibration`)."""

from __future__ import annotations

import math

import numpy as np

from didr.eval.calibration import calibration_table
from didr.eval.frontier import common_seeds, interpolate, mean_interval, method_points, seed_curve
from didr.experiments.digits.calibration import calibrated

#: the baselines DIDR's strong end is set against
RIVALS = ("DI++", "DMD+r")


def _pm(values, fmt: str = "{:.3g}") -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "-"
    mean, half = mean_interval(v)
    return fmt.format(mean) + (f" ± {half:.2g}" if math.isfinite(half) else "")


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        if "opt_fid_real" in r:
            out.setdefault(r["label"], []).append(r)
    return out


def floor_section(result: dict, points) -> str:
    """The floor and the excess per setting, the cross-check, and the strong end in words."""
    rows = result["rows"]
    groups = _groups(rows)
    if not groups:
        return ""
    real = next((r for r in rows if r["family"] == "real"), None)
    sampling = real["fid_real"] if real else math.nan
    head = ("| method | seeds | reward | FID real | floor: the optimum's FID real | excess | held-out floor: raw - bias = net | net + sampling "
            f"({sampling:.3g}) | precision / optimum's | recall / optimum's |")
    lines = [head, "|" + "---|" * 10]
    for label, rs in groups.items():
        col = lambda k, rs=rs: [r.get(k) for r in rs]  # noqa: E731
        net = [r["floor_fid"] + sampling if math.isfinite(r.get("floor_fid", math.nan)) else math.nan for r in rs]
        lines.append(f"| {label} | {len(rs) if rs[0]['seed'] is not None else '-'} | {_pm(col('reward'))} | {_pm(col('fid_real'))} | "
                     f"{_pm(col('opt_fid_real'))} | {_pm(col('excess_fid'), '{:+.3g}')} | {_pm(col('floor_fid_raw'))} - {_pm(col('floor_bias'))} = "
                     f"{_pm(col('floor_fid'))} | {_pm(net)} | {_pm(col('precision'), '{:.3f}')} / {_pm(col('opt_precision'), '{:.3f}')} | "
                     f"{_pm(col('recall'), '{:.3f}')} / {_pm(col('opt_recall'), '{:.3f}')} |")
    return "\n".join([
        "## Fidelity at equal reward: the optimum's floor and each method's excess", "",
        "The RLHF optimum of a reward above the data's is the data tilted by exp(r / beta'), so even an exact sampler of it has an FID to the "
        "held-out images above zero: the **floor** at that reward. Here it is measured like a run: the training images (independent of the "
        f"held-out ones) tilted within each digit at the beta' that gives the run's mean reward, drawn about {result['config']['digits']['eval_samples']:,} "
        "at a time without repeats (probability proportional to the weight), scored against the held-out images as a run is (mean of 5 draws). "
        "**Excess** = FID real - floor: below 0, the run is nearer the untilted images than the optimum of its reward is. Cross-check: the "
        "held-out images tilted at beta' against themselves (raw), less the mean FID of untilted held-out subsets of the tilted set's "
        "effective size (bias), estimates FID(optimum, data); a run of n samples adds its own sampling floor, the FID of n real training "
        "images (the real (train) row).", "",
        *lines, "", strong_end_text(result, points), ""])


def _rival_reaches(result: dict, points, family: str, rival: str, setting: str) -> bool:
    reward = float(np.mean([r["reward"] for r in result["rows"] if r["family"] == family and r["setting"] == setting]))
    seeds = common_seeds(method_points(points, family) + method_points(points, rival))
    return len(_at_reward(points, rival, "fid_real", reward, seeds)) == len(seeds) >= 2


def _at_reward(points, method: str, metric: str, reward: float, seeds: list[int]) -> list[float]:
    pts = method_points(points, method)
    values = [interpolate(*seed_curve(pts, metric, s), reward) for s in seeds]
    return [v for v in values if math.isfinite(v)]


def strong_end_text(result: dict, points) -> str:
    """What the deficit of DIDR (and of each DIDR variant but Monte Carlo) at its strongest setting
    consists of: the floor at its reward, its excess, and each rival's FID real and excess at the
    same reward (the rival's seeds' frontiers interpolated there)."""
    families = [f for f in dict.fromkeys(r["family"] for r in result["rows"]) if (f == "DIDR" or f.startswith("DIDR ")) and f != "DIDR MC"]
    return "\n\n".join(t for t in (_strongest(result, points, f) for f in families) if t)


def _strongest(result: dict, points, family: str) -> str:
    didr = [r for r in result["rows"] if r["family"] == family and "opt_fid_real" in r]
    if not didr:
        return ""
    # the strongest setting whose reward every rival's frontier reaches on every seed (else the strongest)
    settings = sorted({r["setting"] for r in didr}, key=lambda s: float(s.split("=")[1]))
    reached = [s for s in settings if all(_rival_reaches(result, points, family, rival, s) for rival in RIVALS if any(p.method == rival for p in points))]
    strongest = reached[0] if reached else settings[0]
    rs = [r for r in didr if r["setting"] == strongest]
    reward = float(np.mean([r["reward"] for r in rs]))
    floor = float(np.mean([r["opt_fid_real"] for r in rs]))
    fid, _ = mean_interval([r["fid_real"] for r in rs])
    parts = [f"**The strong end that the baselines reach, {family} {strongest}.** Mean reward {reward:.3f} at FID real {fid:.3g}; the optimum of that reward "
             f"scores {floor:.3g} (the floor), so the excess is {fid - floor:+.3g}."]
    for rival in RIVALS:
        if not any(p.method == rival for p in points):
            continue
        seeds = common_seeds(method_points(points, family) + method_points(points, rival))
        values = _at_reward(points, rival, "fid_real", reward, seeds)
        if len(values) < 2:
            parts.append(f"{rival}'s frontier does not reach reward {reward:.3f} on every seed.")
            continue
        mean, half = mean_interval(values)
        where = "below the floor: nearer the untilted images than the optimum of its reward" if mean < floor else "above the floor"
        parts.append(f"{rival} at the same reward: FID real {mean:.3g} ± {half:.2g} (excess {mean - floor:+.3g}, {where}).")
    return " ".join(parts)


def calibration_section(result: dict) -> str:
    rows = calibrated(result)
    if not rows:
        return ""
    return "\n".join([
        "## Calibration: the beta each DIDR run was given against the beta' its mean reward implies", "",
        "DIDR's target is the reference tilted by exp(r / beta), so beta' is solved on the reference's own samples: the teacher's "
        "evaluation samples tilted within each digit, whose mean reward then equals the run's. A calibrated run has beta' = beta, and "
        "its mean reward equals the tilted teacher's at beta (the target); the tilted held-out images' at beta is shown beside it "
        "(the data's own optimum, which FID p* uses). The right panel of the frontier figure plots the same.", "",
        calibration_table(rows, "the tilted teacher's at beta (target)", relative=False), ""])
