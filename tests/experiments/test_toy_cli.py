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


def test_toy_writes_metrics_samples_plots_and_report(tmp_path):
    out = tmp_path / "toy"
    assert main(["toy", "--out", str(out), "--methods", "didr,dipp,di,refl,didr:drs=exact", *TINY]) == 0
    report = json.loads((out / "metrics.json").read_text())
    res = report["results"]
    for row in ["pstar", "q0", "reference_teacher", "initial_generator", "didr", "dipp", "di", "refl", "didr:drs=exact"]:
        for key in ["frac_positive", "mean_reward", "w1_to_pstar", "kl_to_pstar", "low_density_mass"]:
            assert np.isfinite(res[row][key]), (row, key)
    # the exact p* of the default mixture: weights tilted by exp(r / beta), about 0.8 past zero
    assert 0.75 < res["pstar"]["exact"]["frac_positive"] < 0.85
    samples = np.load(out / "samples_didr.npy")
    assert samples.shape == (500,) and np.isfinite(samples).all()
    assert (out / "samples_didr_drs-exact.npy").exists()
    assert (out / "densities.png").stat().st_size > 10_000
    text = (out / "report.md").read_text()
    assert "| didr |" in text and "W1 to p*" in text
    # stages are cached: a rerun reuses them
    assert (out / "stages" / "reference.safetensors").exists()


def test_toy_sweep_writes_pareto(tmp_path):
    out = tmp_path / "sweep"
    assert main(["toy", "--out", str(out), "--methods", "didr", "--sweep-beta", "0.5,2", "--sweep-alpha", "1", *TINY]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert [p["label"] for p in report["sweep"]] == ["beta=0.5", "beta=2", "alpha=1"]
    assert all(np.isfinite(p["w1_to_matched_pstar"]) for p in report["sweep"])
    assert (out / "pareto.png").exists()


def test_toy_on_a_2d_ring(tmp_path):
    out = tmp_path / "ring"
    assert main(["toy", "--out", str(out), "--ring", "6", "--methods", "didr", *TINY]) == 0
    assert np.load(out / "samples_didr.npy").shape == (500, 2)


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
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, fragment):
    out = tmp_path / "never"
    assert main(["toy", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err
    assert not out.exists()  # refused before anything was written


def test_python_dash_m_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "didr", "toy", "--out", "x", "--beta", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "method.beta" in done.stderr
