"""The digits benchmark end to end (``didr bench digits --fast``): it checks the report's contents
and the caching, not the science (the fast preset trains for a few steps only)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from didr.cli import main
from didr.errors import RewardError
from didr.experiments.bench_cli import PRESETS, preset, sweep
from didr.train.cli import load_run_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fast_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "digits"
    assert main(["bench", "digits", "--fast", "--out", str(out)]) == 0
    return out


def test_fast_bench_writes_the_report_table_figures_and_claims(fast_bench):
    report = (fast_bench / "report.md").read_text()
    labels = ["real (train)", "teacher 30 steps", "initial 1 step"] + [r.label for r in sweep("digits", fast=True)]
    assert "| method | NFE | reward | proxy | gold | prompt acc | FID real | FID p* | precision | recall | seconds |" in report
    for label in labels:
        assert f"| {label} |" in report
    assert "## Claims" in report and "Machine:" in report and "Command: `didr bench digits --fast" in report
    metrics = json.loads((fast_bench / "metrics.json").read_text())
    assert [r["label"] for r in metrics["rows"]] == labels
    for row in metrics["rows"]:
        assert all(isinstance(row[k], float) and row[k] == row[k] for k in ("reward", "gold", "fid_real", "fid_opt", "precision", "recall"))
    assert set(metrics["claims"]) >= {"beats_teacher_holds", "pareto_holds", "dominated_baselines"}
    assert (fast_bench / "pareto.png").stat().st_size > 0
    assert len(list((fast_bench / "grids").glob("*.png"))) == len(labels)
    # the Monte-Carlo DRS estimator runs on the 8x8 digits
    assert any("MC" in label for label in labels)


def test_a_rerun_reuses_cached_stages_and_methods(fast_bench):
    files = sorted((fast_bench / "stages").glob("*.safetensors")) + sorted((fast_bench / "runs").glob("*/generator.safetensors"))
    assert len(files) >= 6
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(["bench", "digits", "--fast", "--out", str(fast_bench)]) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_a_nan_reward_stops_the_run_naming_the_reward(fast_bench, tmp_path):
    from didr.experiments.digits import align, prepare_stages
    from didr.objectives.config import MethodConfig

    cfg = preset("digits", fast=True)
    stages = prepare_stages(cfg.digits, 0, fast_bench / "stages", progress=False)  # all cached
    stages.reward.preference.std.fill_(float("nan"))
    with pytest.raises(RewardError, match="'preference'"):
        align(stages, MethodConfig(name="didr", beta=0.5), cfg.train, tmp_path)


def test_didr_train_runs_one_method_with_cached_stages(fast_bench, tmp_path):
    shutil.copytree(fast_bench / "stages", tmp_path / "stages")
    fast = [f"digits.{k}={json.dumps(v)}" for k, v in {**PRESETS["digits"]["digits"], **preset_fast()}.items()]
    rc = main(["train", str(ROOT / "configs" / "digits.yaml"), "--out", str(tmp_path), "--set", "method.name=dipp",
               "--set", "train.steps=2", "--set", "train.progress=false", *sum((["--set", s] for s in fast), [])])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"reward", "gold", "fid_real", "fid_opt", "prompt_accuracy"} <= set(metrics)
    assert (tmp_path / "samples.png").exists()


def preset_fast():
    from didr.experiments.bench_cli import FAST

    return FAST["digits"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_configs_match_the_bench_presets(name):
    assert load_run_config(str(ROOT / "configs" / f"{name}.yaml"), []) == preset(name, fast=False)


def test_bad_settings_exit_2_naming_the_field(tmp_path, capsys):
    assert main(["bench", "digits", "--fast", "--out", str(tmp_path), "--set", "digits.dataset=cifar"]) == 2
    err = capsys.readouterr().err
    assert "digits.dataset" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_one_thread_by_default():
    assert preset("mnist", fast=False).digits.threads == 1 and torch.get_num_threads() >= 1


def test_stages_survive_an_interrupted_run(tmp_path, monkeypatch):
    import didr.experiments.digits as digits

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "align", interrupted)
    assert main(["bench", "digits", "--fast", "--out", str(tmp_path)]) == 130
    stages = sorted((tmp_path / "stages").glob("*.safetensors"))
    assert {p.stem for p in stages} >= {"reference", "classifier", "eval_classifier", "preference", "teacher_pool", "generator_init"}
    assert not list((tmp_path / "stages").glob("*.tmp"))
    before = {p: p.stat().st_mtime_ns for p in stages}
    monkeypatch.undo()
    assert main(["bench", "digits", "--fast", "--out", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stages} == before
