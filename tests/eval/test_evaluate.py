"""didr eval on two tiny generators (a trained didr run and its base pipeline at two steps): every
output, intervals, the paired comparison, the grid, the protocol block, the same per-image scores
as didr score, and the refusal to compare reports measured differently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from didr.cli import main
from tests.helpers import ROOT

PROMPTS = ["a photo of a cat", "a red cup of coffee", "a lighthouse at dusk"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "didr-run"
    assert main(["train", str(ROOT / "configs" / "tiny-sdxl.yaml"), "--out", str(out), "--set", "train.steps=1"]) == 0
    return out


def eval_args(run: Path, out: Path, *extra: str) -> list[str]:
    prompts = out.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return ["eval", str(run), f"{run}/tiny/sdxl?steps=2&guidance=1&name=base", "--prompts", str(prompts), "--reward", f"pickscore:{run}/tiny/clip",
            "--seeds", "2", "--resolution", "16", "--base", "base", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-a") / "out"
    assert main(eval_args(run, out)) == 0
    return out


def test_eval_writes_scores_metrics_report_grid_and_protocol(evaluated, run):
    rows = list(csv.DictReader((evaluated / "scores.csv").open()))
    assert len(rows) == 2 * len(PROMPTS) * 2 and {r["generator"] for r in rows} == {run.name, "base"}
    metrics = json.loads((evaluated / "metrics.json").read_text())
    reward = next(iter(metrics["protocol"]["rewards"]))
    for g in metrics["generators"].values():
        iv = g["rewards"][reward]
        assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["level"] == 0.95
    (comparison,) = metrics["comparisons"]
    assert comparison["generator"] == run.name and comparison["against"] == "base"
    assert 0 <= comparison["win_rate"]["estimate"] <= 1
    assert metrics["generators"][run.name]["pixel_drift_from_base"]["estimate"] > 0
    protocol = metrics["protocol"]
    assert protocol["seeds"] == [0, 1] and protocol["prompts"]["count"] == 3 and protocol["resolution"] == [[16, 16]]
    assert set(protocol["versions"]) >= {"torch", "diffusers", "transformers", "didr"}
    weights = protocol["rewards"][reward]["weights"]
    assert weights and all(len(h) == 64 for h in weights.values())  # sha256 of the reward's weight files
    assert protocol["rewards"][reward]["preprocessing"].startswith("ImagePreprocess")
    assert protocol["generators"]["base"]["call"] == {"num_inference_steps": 2, "guidance_scale": 1.0, "height": 16, "width": 16}
    report = (evaluated / "report.md").read_text()
    assert "## Protocol" in report and "| generator | steps |" in report and "grid.png" in report
    assert (evaluated / "grid.png").stat().st_size > 1000


def test_per_image_scores_are_didr_scores(evaluated, run, tmp_path):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    reward = next(iter(metrics["protocol"]["rewards"]))
    ours = {r["file"]: float(r[reward]) for r in csv.DictReader((evaluated / "scores.csv").open()) if r["generator"] == "base"}
    prompts = tmp_path / "per-image.txt"
    prompts.write_text("\n".join(p for p in PROMPTS for _ in range(2)) + "\n")
    assert main(["score", str(evaluated / "images" / "base"), "-r", f"pickscore:{run}/tiny/clip", "--prompts", str(prompts), "-o", str(tmp_path / "s.csv")]) == 0
    theirs = {f"images/base/{r['file']}": float(r[reward]) for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert ours.keys() == theirs.keys() and all(abs(ours[k] - theirs[k]) < 1e-5 for k in ours)


def test_a_rerun_keeps_the_images_it_has(evaluated, run):
    image = next((evaluated / "images" / "base").glob("*.png"))
    stamp = image.stat().st_mtime_ns
    assert main(eval_args(run, evaluated)) == 0
    assert image.stat().st_mtime_ns == stamp


def test_compare_refuses_reports_measured_differently(evaluated, run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(eval_args(run, other, "--seed-base", "5")) == 0
    capsys.readouterr()
    assert main(["compare", str(evaluated), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not measured alike: seeds: [0, 1] vs [5, 6]" in err[0]
    assert main(["compare", str(evaluated), str(other), "--force"]) == 0
    assert "protocols differ: seeds" in capsys.readouterr().out
    assert main(["compare", str(evaluated), str(evaluated)]) == 0


@pytest.mark.parametrize("args, fragment", [
    (["nowhere/at-all/x"], "neither a didr run, an export nor a diffusers pipeline folder"),
    (["RUN?steps=two"], "steps='two': not a number"),
    (["RUN?cfg=3"], "option 'cfg=3' is not one of"),
    (["RUN", "RUN"], "two share a name"),
    (["RUN?weights=/nowhere/unet.safetensors"], "weights: /nowhere/unet.safetensors does not exist"),
    (["RUN?scheduler=NoSuchScheduler&name=x"], "scheduler='NoSuchScheduler' is not a diffusers scheduler class"),
])
def test_bad_generators_are_refused_before_anything_is_drawn(run, tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    gens = [a.replace("RUN", f"{run}/tiny/sdxl") for a in args]
    assert main(["eval", *gens, "--reward", f"pickscore:{run}/tiny/clip", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not out.exists()


def test_features_give_fidelity_to_the_reference_diversity_and_drift(run, tmp_path):
    out = tmp_path / "fid"
    assert main(eval_args(run, out, "--features", f"clip:{run}/tiny/clip", "--reference", "base")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    fid = metrics["fidelity"]
    assert fid["reference"] == {"generator": "base"}
    base, student = fid["generators"]["base"], fid["generators"][run.name]
    assert base["fd"] == pytest.approx(0, abs=1e-6) and student["fd"] > 1e-6  # the reference against itself, and another set
    assert student["images"] == 6 and student["diversity"] > 0 and student["feature_drift_from_base"] > 0
    assert metrics["protocol"]["features"]["features"] == "clip" and metrics["protocol"]["features"]["weights_sha256"]
    assert "## Fidelity, diversity and drift in clip features" in (out / "report.md").read_text()


def test_a_reference_needs_features(run, tmp_path, capsys):
    assert main(eval_args(run, tmp_path / "x", "--reference", "base")) == 2
    assert "--reference: fidelity is measured in features" in capsys.readouterr().err
