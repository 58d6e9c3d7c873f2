"""Calibration tables: beta given against the beta' each run's mean reward implies."""

import math

import pytest

from didr.eval.calibration import Calibrated, beta_of, calibration_series, calibration_table


def test_beta_of_reads_the_setting_labels():
    assert beta_of("beta=0.36") == 0.36 and beta_of("b=0.5") == 0.5 and beta_of("b=inf") == math.inf
    with pytest.raises(ValueError, match="names no temperature"):
        beta_of("a=x")


def test_table_ratio_and_gap():
    rows = [Calibrated("didr", "beta=0.72", 0.72, [0.871, 0.595, 0.765], [0.757, 0.840, 0.785], target=0.798),
            Calibrated("didr", "beta=inf", math.inf, [math.inf], [0.5])]
    assert rows[0].ratio == pytest.approx((0.871 * 0.595 * 0.765) ** (1 / 3) / 0.72)
    text = calibration_table(rows, "p*'s")
    # the mean reward 0.794 against p*'s 0.798: -0.004, -0.5%
    assert "| didr | 0.72 | 0.871, 0.595, 0.765 | 1.02 | 0.794 ± 0.1 | 0.798 | -0.004 (-0.5%) |" in text
    assert "(-" not in calibration_table(rows, relative=False).split("\n")[2]
    assert calibration_series(rows) == {"didr": [(0.72, [0.871, 0.595, 0.765])]}
