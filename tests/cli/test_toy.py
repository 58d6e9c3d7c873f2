"""``didr toy`` end to end on a tiny budget, and its refusals of bad input (exit 2, one line)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from didr.cli import main

TINY = [
    "--quiet",
    "--set", "toy.ref_steps=30", "--set", "toy.ref_batch=128", "--set", "toy.distill_steps=20",
    "--set", "toy.distill_batch=128", "--set", "toy.eval_samples=500", "--set", "toy.teacher_steps=5",
    "--set", "train.steps=3", "--set", "train.batch_size=64", "--set", "train.ta_updates=1",
]


def test_toy_writes_metrics_samples_plots_and_report(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "--out", str(out), "--methods", "didr,dipp,di,refl,didr:drs=exact", *TINY]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    res = report["results"]
    for row in ["pstar", "q0", "reference_teacher", "initial_generator", "didr", "dipp", "di", "refl", "didr:drs=exact"]:
        for key in ["frac_positive", "mean_reward", "off_data_median", "w1_to_pstar", "w1_equal", "mode_tv_equal", "off_data_equal"]:
            assert np.isfinite(res[row][key]), (row, key)
    # the exact p* of the default mixture: weights tilted by exp(r / beta), about 0.8 on the right mode
    assert 0.75 < res["pstar"]["exact"]["mode_weights"][1] < 0.85
    assert res["pstar"]["beta_equal"] == pytest.approx(0.72, rel=0.2)  # exact samples: their own beta
    samples = np.load(out / "samples_didr.npy")
    assert samples.shape == (500, 1) and np.isfinite(samples).all()
    assert (out / "samples_didr_drs-exact.npy").exists()
    assert (out / "densities.png").stat().st_size > 10_000
    text = (out / "report.md").read_text()
    assert "| didr |" in text and "W1 to p*(beta')" in text
    # calibration: each DIDR run's beta' against its beta, in the printout and the report; a budget this short says so
    line = f"calibration: didr at beta 0.72 lands at beta' {res['didr']['beta_equal']:.3g}; its mean reward {res['didr']['mean_reward']:.3f} is"
    assert line in printed and "- C" + line[1:] in text and "calibration: didr:drs=exact at beta 0.72" in printed
    assert "lands every one of 3 seeds within 2%" in printed
    # stages are cached per seed: a rerun reuses them
    assert (out / "stages" / "seed0" / "reference.safetensors").exists()


def test_toy_on_a_2d_ring(tmp_path):
    out = tmp_path / "ring"
    assert main(["toy", "--out", str(out), "--ring", "6", "--methods", "didr", *TINY]) == 0
    assert np.load(out / "samples_didr.npy").shape == (500, 2)


def test_toy_in_8d_from_a_mixture_file_with_a_direction_reward(tmp_path):
    mixture = tmp_path / "ring8d.yaml"
    means = [[3 * np.cos(a), 3 * np.sin(a)] + [0.0] * 6 for a in np.arange(4) * np.pi / 2]
    mixture.write_text(json.dumps({"means": means, "stds": [0.05] * 4, "weights": [0.25] * 4}))
    out = tmp_path / "ring8d"
    reward = "linear:1,0,0.5,0.5,0.5,0.5,0.5,0.5"
    assert main(["toy", "--out", str(out), "--mixture", str(mixture), "--reward", reward, "--methods", "didr:drs=exact,dipp", *TINY]) == 0
    assert np.load(out / "samples_dipp.npy").shape == (500, 8)
    report = json.loads((out / "metrics.json").read_text())
    assert report["exact_method"] == "closed form (M14)" and (out / "densities.png").exists()


def test_frontier_writes_table_plot_and_comparisons_and_resumes(tmp_path, capsys):
    out = tmp_path / "frontier"
    args = ["toy", "--frontier", "--out", str(out), "--seeds", "2", "--methods", "didr,refl",
            "--strengths", "didr=0.5,2", "--strengths", "refl=0.1,1", *TINY]
    assert main(args) == 0
    report = json.loads((out / "frontier.json").read_text())
    assert [(p["method"], p["setting"]) for p in report["points"]] == [
        ("didr", "beta=0.5"), ("didr", "beta=2"), ("refl", "refl_reg=0.1"), ("refl", "refl_reg=1")]
    assert all(p["seeds"] == [0, 1] and len(p["errors"]["w1"]) == 2 for p in report["points"])
    assert {(c["a"], c["b"], c["metric"]) for c in report["comparisons"]} == {("didr", "refl", m) for m in ("w1", "mode_tv", "off_data")}
    assert report["runs_trained"] == 8 and (out / "frontier.png").stat().st_size > 10_000
    text = (out / "frontier.md").read_text()
    assert "Generator floor" in text and "| didr | beta=0.5 | 2 |" in text and "didr toy --frontier" in text
    assert (out / "stages" / "seed1" / "generator_init_trained.safetensors").exists()
    # a rerun trains nothing: every run is cached, and gives the same frontier
    assert main(args) == 0
    again = json.loads((out / "frontier.json").read_text())
    assert again["runs_trained"] == 0 and again["points"] == report["points"]
    # a changed setting retrains only what it changes
    assert main([*args[:-len(TINY)], "--strengths", "refl=0.1,3", *TINY]) == 0
    assert json.loads((out / "frontier.json").read_text())["runs_trained"] == 2




@pytest.mark.slow
def test_frontier_in_two_processes_equals_one(tmp_path):
    """Seeds, not process order, decide every number: --jobs 2 reproduces --jobs 1 exactly."""
    common = ["--frontier", "--seeds", "2", "--methods", "didr,dipp", "--strengths", "didr=0.5", "--strengths", "dipp=0.2", *TINY]
    assert main(["toy", "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["toy", "--out", str(tmp_path / "two"), "--jobs", "2", *common]) == 0
    one, two = (json.loads((tmp_path / d / "frontier.json").read_text()) for d in ("one", "two"))
    figures = lambda report: [{k: p[k] for k in ("method", "setting", "reward", "errors", "beta_equal")} for p in report["points"]]  # noqa: E731
    assert figures(one) == figures(two) and two["jobs"] == 2


def _mixture_file(tmp_path, text):
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--weights=0.6,0.6"], "sum to 1"),
        (["--stds=0.5,-0.5"], "stds must be > 0"),
        (["--beta", "0"], "method.beta: must be > 0"),
        (["--beta", "-1"], "method.beta: must be > 0"),
        (["--methods", "didr,magic"], "unknown method 'magic'"),
        (["--reward", "banana:3"], "unknown reward 'banana:3'"),
        (["--set", "train.stepz=3"], "'train.stepz'"),
        (["--methods", "didr:nofield=1"], "'method.nofield'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--means=-2,2,4"], "as many stds and weights as means"),
        (["--mixture", "{tmp}/none.yaml"], "mixture file not found"),
        (["--mixture", "MIX:means: [[0, 1], [1]]\nstds: [1, 1]\nweights: [0.5, 0.5]"], "rows of lengths [2, 1]"),
        (["--mixture", "MIX:means: [[0, 1], [1, 0]]\nstds: [1]\nweights: [0.5, 0.5]"], "as many stds and weights as means (2)"),
        (["--mixture", "MIX:means: [[0, 1], [1, 0]]\nstds: [1, 1]\nweights: [0.5, 0.4]"], "sum to 1"),
        (["--ring", "8", "--reward", "linear:1,0,1"], "toy.reward: reward 'linear:1,0,1': its direction has 3 components, the data are 2-dimensional"),
        (["--reward", "sigmoid:4:1,x"], "direction '1,x'"),
        (["--frontier", "--seeds", "1"], "--seeds: intervals need at least 2 seeds"),
        (["--frontier", "--jobs", "0"], "--jobs: must be >= 1"),
        (["--frontier", "--strengths", "dipp"], "expected METHOD=v1,v2"),
        (["--frontier", "--strengths", "magic=1,2"], "--strengths magic: no such method"),
        (["--frontier", "--strengths", "didr=0.5,-1"], "beta must be > 0"),
        (["--seeds", "3"], "--seeds is for frontiers"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, fragment):
    out = tmp_path / "never"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    args = [_mixture_file(tmp_path, a[4:]) if a.startswith("MIX:") else a for a in args]
    assert main(["toy", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err
    assert not out.exists()  # refused before anything was written


def test_python_dash_m_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "didr", "toy", "--out", "x", "--beta", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "method.beta" in done.stderr
