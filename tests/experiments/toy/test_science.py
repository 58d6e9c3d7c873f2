"""The toy's claims, on the fast preset (slow: minutes each; run with `pytest -m slow`)."""

import json

import pytest

from didr.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "mixture",
    [[], ["--means=-1.5,2.5", "--stds=0.4,0.6", "--weights=0.7,0.3"]],
    ids=["default", "asymmetric"],
)
def test_didr_lands_at_the_exact_optimum(tmp_path, mixture):
    out = tmp_path / "toy"
    assert main(["toy", "--out", str(out), "--methods", "didr", "--quiet", *mixture]) == 0
    res = json.loads((out / "metrics.json").read_text())["results"]
    exact = res["pstar"]["exact"]["frac_positive"]
    assert abs(res["didr"]["frac_positive"] - exact) <= 0.05
    assert res["didr"]["w1_to_pstar"] <= 0.2
