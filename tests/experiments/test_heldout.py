"""A tiny text-to-image run that evaluates itself: held-out prompts kept out of training, sample
grids under OUT/samples, scalars and images in TensorBoard, the evaluations' record, the curves,
and the alarm's stop that exports the best evaluation's generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from didr.cli import main
from tests.helpers import ROOT

TINY = str(ROOT / "configs" / "tiny-sdxl.yaml")
PROMPTS = '["a photo of a cat","a red cup of coffee","an astronaut riding a horse","a lighthouse at dusk","a bowl of ramen"]'


def train(out: Path, *sets: str) -> int:
    base = [f"backbone.prompt_list={PROMPTS}", "backbone.eval_prompts=split:2", "backbone.eval_seeds=2", "train.steps=4", "train.eval_every=2"]
    return main(["train", TINY, "--out", str(out), *(a for s in (*base, *sets) for a in ("--set", s))])


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heldout") / "run"
    assert train(out) == 0
    return out


def test_a_run_with_eval_every_writes_grids_tensorboard_images_and_curves(evaluated_run):
    samples = evaluated_run / "samples"
    assert sorted(p.name for p in samples.glob("step-*.png")) == ["step-000000.png", "step-000002.png", "step-000004.png"]
    assert len(list((samples / "step-000004").glob("*.png"))) == 2 * 2  # 2 held-out prompts x 2 seeds
    records = [json.loads(line) for line in (samples / "evaluations.jsonl").read_text().splitlines()]
    assert [r["evaluation"]["step"] for r in records] == [0, 2, 4]
    first, last = records[0], records[-1]
    assert first["drift"]["estimate"] == 0 and last["drift"]["estimate"] > 0  # the generator moved from where it started
    assert last["evaluation"]["diversity"] > 0
    metrics = [json.loads(line) for line in (evaluated_run / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval/trained" in m for m in metrics) == 3
    assert (evaluated_run / "curves.png").stat().st_size > 5000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(evaluated_run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "samples" in events.Tags()["images"] and len(events.Images("samples")) == 3
    assert "eval/trained" in events.Tags()["scalars"]


def test_held_out_prompts_are_not_trained_on(evaluated_run):
    from didr import config as cfgio
    from didr.experiments.config import RunConfig
    from didr.models.pipeline import split_prompts

    cfg = cfgio.load(RunConfig, evaluated_run / "config.yaml")
    train_prompts, held_out = split_prompts(cfg.backbone, held_out=True)
    assert held_out == ["a lighthouse at dusk", "a bowl of ramen"] and not set(held_out) & set(train_prompts)
    assert split_prompts(cfg.backbone, held_out=False)[1] == []  # without evaluations every prompt trains


def test_the_alarm_stops_the_run_and_exports_the_best_evaluation(tmp_path, monkeypatch):
    """A held-out reward that falls as the trained one rises (a reward the test controls): the alarm
    fires, the run stops before its last step, and the export is the best evaluation's generator."""
    from didr.eval import alarm

    real_add = alarm.HackingAlarm.add

    def rigged(self, evaluation):  # held-out collapse after the first evaluation: what hacking looks like
        step = evaluation.step
        fake = alarm.Evaluation(step, trained=float(step), trained_noise=0.1, held_out={"gold": -float(step)}, held_out_noise={"gold": 0.1})
        return real_add(self, fake)

    monkeypatch.setattr(alarm.HackingAlarm, "add", rigged)
    out = tmp_path / "run"
    assert train(out, "train.alarm=stop", "train.steps=20", "train.eval_every=1") == 0
    log = (out / "train.log").read_text()
    # hacking shows from step 2 (window 3) and fires when step 3 confirms it
    assert "alarm at step 3: reward hacking?" in log and "stopped by the alarm at step 3; the export is the generator of step 0" in log
    assert not (out / "samples" / "step-000004.png").exists()
    from didr.models.sample import Sampler, load_run

    cfg, info = load_run(out)
    exported = Sampler(cfg, out / "export").sample(["a cat"], info["times"], seed=1)
    started = Sampler(cfg).sample(["a cat"], info["times"], seed=1)  # the base itself: step 0 of a LoRA generator over it
    torch.testing.assert_close(exported, started, rtol=0, atol=1e-5)
