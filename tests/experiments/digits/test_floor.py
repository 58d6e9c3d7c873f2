"""The floor under FID real at a given reward, and calibration on digits: on feature sets whose
answers are known (no network; the 'classifier' returns the image itself as its features)."""

import math
from types import SimpleNamespace

import pytest
import torch

from didr.eval import image_metrics as im
from didr.experiments.digits.calibration import Calibration, calibrated, tilted_mean
from didr.experiments.digits.floor import OptimumFloor, add_floor, pps_draw, weighted_precision_recall


class Identity:
    def features(self, x):
        return x.flatten(1)


def _stages(n_train=2000, n_held=500, dim=4, seed=0):
    """Two classes of Gaussian 'images'; the reward is the first coordinate."""
    g = torch.Generator().manual_seed(seed)
    data = SimpleNamespace(train_x=torch.randn(n_train, dim, generator=g), train_y=torch.arange(n_train) % 2,
                           test_x=torch.randn(n_held, dim, generator=g), test_y=torch.arange(n_held) % 2)
    return SimpleNamespace(data=data, eval_classifier=Identity(), reward=lambda x, y: x[:, 0].float(), cfg=SimpleNamespace(eval_samples=500))


def _floor(**kw):
    s = _stages(**kw)
    held = s.data.test_x.double()
    return OptimumFloor(s, held, s.data.test_x[:, 0].float(), draws=3)


def test_pps_draw_has_the_expected_size_no_repeats_and_unbiased_weighted_means():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(4000, generator=g) ** 4  # uneven weights: some are capped at inclusion probability 1
    values = torch.randn(4000, generator=g)
    target = float((w * values).sum() / w.sum())
    sizes, means = [], []
    for _ in range(200):
        idx, ht = pps_draw(w, 1000, g)
        assert len(set(idx.tolist())) == len(idx)
        sizes.append(len(idx))
        means.append(float((ht * values[idx]).sum() / ht.sum()))
    assert sum(sizes) / len(sizes) == pytest.approx(1000, rel=0.02)
    assert sum(means) / len(means) == pytest.approx(target, abs=0.01)


def test_weighted_precision_and_recall_are_the_plain_ones_under_equal_weights():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 3, generator=g), torch.randn(200, 3, generator=g) * 1.5
    assert weighted_precision_recall(real, fake, torch.ones(200)) == pytest.approx(im.knn_precision_recall(real, fake))
    # all the weight on samples far outside the real set: precision 0
    far = torch.cat([fake, torch.full((5, 3), 50.0)])
    assert weighted_precision_recall(real, far, torch.cat([torch.zeros(200), torch.ones(5)]))[0] == 0.0


def test_the_floor_is_the_sampling_floor_at_the_datas_reward_and_grows_with_the_tilt():
    floor = _floor()
    plain = floor(-10.0)  # below the data's mean reward: no tilt
    assert plain["floor_fid_raw"] == 0.0 and plain["floor_fid"] == 0.0
    # untilted train draws of ~500 against 500 held-out images: FID of two independent samples, > 0
    assert 0 < plain["opt_fid_real"] < 0.2 and plain["opt_size"] == pytest.approx(500, rel=0.1)
    tilted = floor(0.5)  # mean of the first coordinate raised to 0.5: the optimum leaves the data
    # the mean shift alone contributes 0.25 to FID(optimum, data); the bias correction removes the small-sample part
    assert tilted["floor_fid_raw"] > tilted["floor_fid"] > 0.2
    assert tilted["floor_bias"] > 0
    assert tilted["opt_fid_real"] > 0.25 and tilted["opt_recall"] < plain["opt_recall"]
    # the two estimates agree: the held-out one plus the sampling floor is the sampled one
    assert tilted["floor_fid"] + plain["opt_fid_real"] == pytest.approx(tilted["opt_fid_real"], abs=0.1)
    assert math.isnan(floor(50.0)["opt_fid_real"])  # beyond what any tilt of the images reaches


def test_add_floor_gives_each_row_its_excess():
    floor = _floor()
    rows = [{"label": "real (train)", "family": "real", "reward": 0.0, "fid_real": 0.1},
            {"label": "x", "family": "DIDR", "reward": 0.5, "fid_real": 1.0, "recall": 0.5}]
    add_floor(rows, floor)
    assert "opt_fid_real" not in rows[0]
    assert rows[1]["excess_fid"] == pytest.approx(1.0 - rows[1]["opt_fid_real"])
    assert rows[1]["excess_recall"] == pytest.approx(rows[1]["opt_recall"] - 0.5)


def test_calibration_solves_beta_prime_on_the_teachers_samples():
    g = torch.Generator().manual_seed(2)
    rewards, labels = torch.randn(4000, generator=g), torch.arange(4000) % 2
    cal = Calibration(rewards, labels, rewards + 0.2, labels)
    target = tilted_mean(rewards, labels, 0.5)
    rows = [{"label": "DIDR b=0.5", "family": "DIDR", "setting": "b=0.5", "seed": s, "reward": target} for s in range(3)]
    rows.append({"label": "DI++ a=1", "family": "DI++", "setting": "a=1", "seed": 0, "reward": target})
    cal.add(rows)
    assert all(r["beta_teacher"] == pytest.approx(0.5, rel=1e-3) for r in rows[:3]) and "beta_teacher" not in rows[3]
    result = {"rows": rows, "calibration_targets": cal.targets([0.5])}
    (row,) = calibrated(result)
    assert row.beta == 0.5 and row.ratio == pytest.approx(1.0, rel=1e-3) and row.target == pytest.approx(target)
    assert row.extra["the data's at beta"] == pytest.approx(target + 0.2, abs=1e-6)  # a shifted set tilts to a shifted mean
