"""A digits run that watches itself: held-out evaluations with the held-out reward and the truth
beside them, and the alarm that stops a run on the exploitable proxy and keeps its best evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from didr.cli import main
from tests.helpers import ROOT

TINY = ["digits.ref_steps=200", "digits.distill_steps=50", "digits.classifier_steps=50", "digits.preference_steps=50", "digits.teacher_pool=100",
        "digits.eval_samples=100", "train.steps=40", "train.eval_every=10"]


@pytest.fixture(scope="module")
def hacked_run(tmp_path_factory) -> Path:
    """ReFL without its regulariser on the proxy that pays for ink outside the digits."""
    out = tmp_path_factory.mktemp("watch") / "run"
    sets = [*TINY, "digits.ink_weight=5", "method.name=refl", "method.refl_reg=0", "train.alarm=stop"]
    assert main(["train", str(ROOT / "configs" / "digits.yaml"), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    return out


def test_the_evaluations_record_the_held_out_reward_and_the_truth_beside_the_trained_one(hacked_run):
    records = [json.loads(line) for line in (hacked_run / "samples" / "evaluations.jsonl").read_text().splitlines()]
    assert {"trained", "heldout_prompt", "gold", "prompt_accuracy", "outside_ink"} <= set(records[0]["intervals"])
    assert set(records[0]["evaluation"]["held_out"]) == {"heldout_prompt"}  # the alarm sees no truth
    first, last = records[0]["intervals"], records[-1]["intervals"]
    assert last["outside_ink"]["estimate"] > first["outside_ink"]["estimate"] + 0.1  # the exploit was found
    assert last["gold"]["estimate"] < first["gold"]["estimate"]  # and it cost the gold attribute
    assert records[-1]["drift"]["estimate"] > 0 and records[0]["drift"]["estimate"] == 0
    assert (hacked_run / "stages" / "heldout_classifier.safetensors").is_file()
    assert (hacked_run / "samples" / f"step-{records[-1]['evaluation']['step']:06d}.png").is_file()


def test_the_alarm_stops_the_run_and_keeps_the_best_held_out_evaluation(hacked_run):
    log = (hacked_run / "train.log").read_text()
    records = [json.loads(line) for line in (hacked_run / "samples" / "evaluations.jsonl").read_text().splitlines()]
    fired = [r["evaluation"]["step"] for r in records if r["alarms"]]
    assert fired and records[-1]["evaluation"]["step"] == fired[0] < 40  # stopped at the first alarm
    best = records[-1]["best_step"]
    assert f"the export is the generator of step {best}" in log and best < fired[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(hacked_run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert len(events.Images("samples")) == len(records) and "eval/gold" in events.Tags()["scalars"]


def test_the_watch_reports_the_benchmarks_own_figures(hacked_run):
    """On the same images, the evaluation during a run gives the benchmark's reward, gold and prompt accuracy."""
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.experiments.digits.evaluate import Evaluator
    from didr.experiments.digits.stages import generate, prepare_stages
    from didr.experiments.digits.watch import DigitsWatch

    cfg = cfgio.load(RunConfig, hacked_run / "config.yaml")
    stages = prepare_stages(cfg.digits, cfg.train.seed, hacked_run / "stages", progress=False)
    watch = DigitsWatch(stages, None, hacked_run / "stages", cfg.train.seed)
    scalars = watch(stages.generator, 0).scalars
    figures = Evaluator(stages)(generate(stages.generator, watch.z, watch.cond), watch.cond)
    for name, figure in (("trained", "reward"), ("gold", "gold"), ("prompt_accuracy", "prompt_accuracy")):
        assert scalars[f"eval/{name}"] == pytest.approx(figures[figure], rel=1e-6, abs=1e-7)
