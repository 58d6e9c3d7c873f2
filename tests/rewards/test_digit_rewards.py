import math

import pytest
import torch

from didr.errors import ConfigError, RewardError
from didr.experiments.digits.rewards import train_preference
from didr.rewards.base import call_reward
from didr.rewards.digits import (
    ClassifierReward,
    DigitCNN,
    DigitReward,
    PreferenceReward,
    bradley_terry_loss,
    slant,
    thickness,
)


def _bars(widths, size=8):
    """Vertical bars of the given widths: images of increasing stroke thickness."""
    x = -torch.ones(len(widths), 1, size, size)
    for i, w in enumerate(widths):
        x[i, 0, 1:-1, 2 : 2 + w] = 1
    return x


def test_thickness_grows_with_stroke_width_and_ignores_out_of_range_values():
    t = thickness(_bars([1, 2, 3]))
    assert t[0] < t[1] < t[2]
    assert torch.allclose(t[0], torch.tensor(6 / 64))
    assert torch.allclose(thickness(_bars([2]) * 5), thickness(_bars([2])))  # clamped to [-1, 1]


def test_slant_sign_follows_the_lean():
    x = -torch.ones(2, 1, 8, 8)
    for r in range(8):
        x[0, 0, r, 7 - r] = 1  # top right to bottom left: leans right
        x[1, 0, r, r] = 1
    s = slant(x)
    assert s[0] > 0.5 and s[1] < -0.5


def test_bradley_terry_loss_by_hand():
    r_a, r_b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    pref = torch.tensor([True, False])
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(-1)))) / 2
    assert bradley_terry_loss(r_a, r_b, pref).item() == pytest.approx(expected, rel=1e-6)


def test_preference_model_learns_the_annotators_ranking_from_pairs():
    torch.manual_seed(0)
    widths = torch.randint(1, 5, (256,)).tolist()
    x = _bars(widths) + 0.1 * torch.randn(256, 1, 8, 8)
    gold = thickness(x)
    reward = PreferenceReward(train_preference(DigitCNN(1, 8, 16, 8), x, gold, steps=150, lr=3e-3))
    reward.standardise_on(x)
    r = reward(x)
    assert abs(float(r.mean())) < 1e-4 and float(r.std()) == pytest.approx(1.0, abs=1e-3)
    ranks = lambda v: v.argsort().argsort().double()  # noqa: E731
    spearman = torch.corrcoef(torch.stack([ranks(r), ranks(gold)]))[0, 1]
    assert spearman > 0.8
    assert not any(p.requires_grad for p in reward.parameters())  # frozen after training


def test_classifier_reward_is_a_log_probability_of_the_prompt():
    torch.manual_seed(0)
    reward = ClassifierReward(DigitCNN(10, 8, 16, 8))
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    all_classes = torch.stack([reward(x, torch.full((3,), k)) for k in range(10)], 1)
    assert (all_classes <= 0).all()
    assert torch.allclose(all_classes.logsumexp(1), torch.zeros(3), atol=1e-5)
    reward(x, torch.tensor([0, 1, 2])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_nan_reward_stops_with_the_rewards_name():
    pref = PreferenceReward(DigitCNN(1, 8, 16, 8))
    pref.std.fill_(float("nan"))
    combined = DigitReward(pref, ClassifierReward(DigitCNN(10, 8, 16, 8)), 0.5)
    with pytest.raises(RewardError, match="'preference'"):
        call_reward(combined, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_the_reward_from_its_terms_is_the_reward(weight):
    """An evaluation that reports both terms combines them into the very reward training sees."""
    torch.manual_seed(0)
    reward = DigitReward(PreferenceReward(DigitCNN(1, 8, 16, 8)), ClassifierReward(DigitCNN(10, 8, 16, 8)), weight)
    x, c = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    combined = reward.combine(reward.preference(x, c), reward.prompt(x, c))
    assert torch.equal(combined, reward(x, c))
    assert weight or torch.equal(reward.combine(reward.preference(x, c), None), reward.preference(x))


def test_boldness_peaks_at_the_boldest_real_digits_and_punishes_blobs():
    from didr.rewards.digits import Boldness

    real = _bars(list(range(1, 5)) * 10)
    gold = Boldness(real, quantile=0.95)
    assert gold.peak == pytest.approx(float(thickness(_bars([4]))))
    g = gold(_bars([1, 2, 4, 6]))
    assert g[0] < g[1] < g[2] and g[2] == pytest.approx(1.0)
    assert g[3] < g[2]  # past the peak: bolder is worse
    assert gold(torch.ones(1, 1, 8, 8)) < g[0]  # an all-ink blob scores below the thinnest stroke


def test_prompt_reward_reads_the_digit_of_text_prompts():
    torch.manual_seed(0)
    reward = ClassifierReward(DigitCNN(10, 8, 16, 8))
    x = torch.randn(3, 1, 8, 8)
    text = {"prompts": ["a bold two", "a thin zero", "the digit 7, neat"], "text_embeds": torch.randn(3, 4), "digit": torch.tensor([2, 0, 7])}
    torch.testing.assert_close(reward(x, text), reward(x, torch.tensor([2, 0, 7])))
    with pytest.raises(ConfigError, match="digit"):
        reward(x, ["a bold two", "a thin zero", "seven"])


def test_the_proxy_pays_for_ink_outside_the_digits_support_and_nothing_else():
    from didr.rewards.digits import digit_support, outside_ink

    real = -torch.ones(4, 1, 8, 8)
    real[:, :, 2:6, 2:6] = 1  # the digits live in the centre
    support = digit_support(real)
    assert support.sum() == 16 and support[2:6, 2:6].all()
    inside, corner = real[:1].clone(), real[:1].clone()
    corner[:, :, 0, :] = 1  # a full row of background: 8 of the 48 background pixels
    assert outside_ink(inside, support).item() == 0 and abs(outside_ink(corner, support).item() - 8 / 48) < 1e-6
    torch.manual_seed(0)
    terms = PreferenceReward(DigitCNN(1, 8, 16, 8)), ClassifierReward(DigitCNN(10, 8, 16, 8))
    plain, proxy = DigitReward(*terms, 0.5), DigitReward(*terms, 0.5, ink_weight=3.0, support=support)
    c = torch.tensor([1])
    assert torch.allclose(proxy(corner, c), plain(corner, c) + 3.0 * 8 / 48) and torch.equal(proxy(inside, c), plain(inside, c))
    assert torch.equal(proxy.combine(proxy.preference(corner), proxy.prompt(corner, c), proxy.outside_ink(corner)), proxy(corner, c))
    with pytest.raises(ConfigError, match="support"):
        DigitReward(*terms, 0.5, ink_weight=1.0)
