"""The toy's claims, on the fast preset (slow: minutes each; run with `pytest -m slow`)."""

import json

import pytest

from didr.cli import main

pytestmark = pytest.mark.slow


def test_didr_lands_at_the_exact_optimum_over_three_seeds(tmp_path):
    """What benchmarks/results/toy_calibration.md records for the default toy: one seed at the fast
    budget lands a few percent either side of p*_beta's reward, the mean over 3 seeds within 2%."""
    rewards, w1 = [], []
    for seed in range(3):
        out = tmp_path / f"seed{seed}"
        assert main(["toy", "--out", str(out), "--methods", "didr", "--quiet", "--seed", str(seed), "--threads", "1"]) == 0
        res = json.loads((out / "metrics.json").read_text())["results"]
        exact = res["pstar"]["exact"]["mean_reward"]  # p*_beta's mean reward by quadrature
        rewards.append(res["didr"]["mean_reward"])
        w1.append(res["didr"]["w1_to_pstar"])
    assert abs(sum(rewards) / 3 / exact - 1) <= 0.02
    assert sum(w1) / 3 <= 0.2
