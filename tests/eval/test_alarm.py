"""The reward-hacking rule on histories whose truth is known."""

import numpy as np

from didr.eval.alarm import TRAINED, Evaluation, HackingAlarm, evaluation_of
from didr.eval.stats import mean_interval


def history(trained, held, diversity=None, spread=0.3, jitter=0.01, prompts=20, seeds=4):
    """Evaluations of the same prompts and seeds: each image's score is its reward's mean at that
    evaluation, plus the image's own offset (the same at every evaluation, sd ``spread``), plus fresh
    noise (sd ``jitter``)."""
    rng = np.random.default_rng(0)
    offsets = {k: rng.normal(0, spread, (prompts, seeds)) for k in (TRAINED, "hps")}
    evals = []
    for i, (t, h) in enumerate(zip(trained, held)):
        grids = {k: m + offsets[k] + rng.normal(0, jitter, (prompts, seeds)) for k, m in ((TRAINED, t), ("hps", h))}
        evals.append(evaluation_of(100 * i, {k: mean_interval(g) for k, g in grids.items()}, None if diversity is None else diversity[i], grids))
    return evals


def run(evals, **kw):
    alarm = HackingAlarm(**kw)
    return alarm, [a for e in evals for a in alarm.add(e)]


def test_trained_up_and_held_out_down_fires_once_the_window_shows_it():
    alarm, fired = run(history([0, 0.2, 0.5, 0.9], [0.5, 0.45, 0.3, 0.1]), confirm=1)
    assert [a.kind for a in fired] == ["hacking", "hacking"] and fired[0].step == 200
    assert "paired per image" in fired[0].message
    assert alarm.best().step == 0  # held-out rewards were highest at the start


def test_by_default_hacking_must_show_at_two_evaluations_in_a_row():
    assert [a.step for a in run(history([0, 0.2, 0.5, 0.9], [0.5, 0.45, 0.3, 0.1]))[1]] == [300]
    assert run(history([0, 0.5, 0.5, 0.5], [0.5, 0.2, 0.2, 0.2]), window=2)[1] == []  # shown once, then flat: no alarm


def test_both_rising_is_not_hacking_and_the_best_is_the_last():
    alarm, fired = run(history([0, 0.2, 0.5, 0.9], [0.1, 0.3, 0.5, 0.8]))
    assert fired == [] and alarm.best().step == 300


def test_changes_within_the_images_own_noise_do_not_fire():
    _, fired = run(history([0, 0.05, 0.08, 0.09], [0.5, 0.48, 0.46, 0.45], jitter=0.3))
    assert fired == []


def test_pairing_sees_a_change_far_smaller_than_the_spread_over_prompts():
    evals = history([0, 0.1, 0.2, 0.3], [0.5, 0.4, 0.3, 0.2], spread=1.0)
    assert [a.step for a in run(evals, confirm=1)[1]] == [200, 300]
    assert run(evals, paired=False, confirm=1)[1] == []  # 0.2 is under half the interval's half-width over 20 prompts
    unscored = [Evaluation(**{**e.__dict__, "scores": {}}) for e in evals]
    assert run(unscored, confirm=1)[1] == []  # evaluations without per-image scores fall back to the unpaired rule


def test_the_unpaired_rule_counts_changes_in_half_widths_of_the_first_evaluation():
    _, fired = run(history([0, 0.5, 1.0, 1.5], [0.5, 0.2, -0.1, -0.4], spread=0.3), paired=False, confirm=1)
    assert [a.step for a in fired] == [200, 300] and "half-widths" in fired[0].message


def test_collapse_of_diversity_fires():
    _, fired = run(history([0, 0.1, 0.2], [0.5, 0.55, 0.6], diversity=[1.0, 0.7, 0.4]))
    assert [a.kind for a in fired] == ["collapse"] and fired[0].step == 200


def test_without_held_out_rewards_only_collapse_can_fire():
    evals = [Evaluation(step=i, trained=float(i), trained_noise=0.1, diversity=1.0) for i in range(5)]
    alarm, fired = run(evals)
    assert fired == [] and alarm.best().step == 4


def test_the_decline_that_lasts_starts_where_the_values_stay_below_their_best():
    from didr.eval.alarm import lasting_decline

    halves = [0.1] * 7
    assert lasting_decline([0.0, 0.5, 0.6, 0.55, 0.3, 0.2, 0.1], halves) == 4  # 0.55 is within the best's half-width
    assert lasting_decline([0.0, 0.5, 0.3, 0.6, 0.5, 0.55, 0.6], halves) is None  # recovered: a dip, not a decline
    assert lasting_decline([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.2], halves) is None  # one evaluation below is not yet lasting
    assert lasting_decline([0.5, 0.5, 0.5, 0.3, 0.2, 0.3, 0.35], [0.1, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1]) == 3  # the first best's width


def test_seed_diversity_is_the_mean_rms_distance_over_pairs_of_seeds():
    import itertools

    import torch

    from didr.eval.alarm import seed_diversity

    images = torch.rand(3, 4, 1, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    pairs = [float(((images[p, a] - images[p, b]) ** 2).mean().sqrt()) for p in range(3) for a, b in itertools.combinations(range(4), 2)]
    assert abs(seed_diversity(images) - sum(pairs) / len(pairs)) < 1e-12
    assert seed_diversity(images[:, :1].expand(3, 4, 1, 5, 5)) == 0


def test_the_evaluation_log_replaces_a_rewritten_step_and_reads_back(tmp_path):
    from didr.eval.alarm import TRAINED, EvaluationLog, evaluation_of
    from didr.eval.stats import Interval

    log = EvaluationLog(tmp_path / "evaluations.jsonl")
    for step, value in ((0, 1.0), (10, 2.0), (20, 3.0), (10, 5.0)):  # a resume from step 10 rewrites 10 and drops 20
        evaluation = evaluation_of(step, {TRAINED: Interval(value, value - 0.2, value + 0.2), "hps": Interval(-value, -value - 1, -value + 1)}, 0.5)
        log.write({"evaluation": evaluation.__dict__})
    assert [(e.step, e.trained) for e in log.evaluations()] == [(0, 1.0), (10, 5.0)]
    assert abs(log.evaluations()[1].trained_noise - 0.2) < 1e-12 and log.evaluations()[1].held_out == {"hps": -5.0}


def test_a_resumed_run_replaces_the_evaluations_from_its_step_on():
    evals = history([0, 0.2, 0.5, 0.9], [0.5, 0.45, 0.3, 0.1])
    alarm = HackingAlarm(history=list(evals))  # an earlier start got to step 300; the run resumed from step 200
    fired = alarm.add(evals[2])
    assert [e.step for e in alarm.history] == [0, 100, 200]
    assert fired == []  # step 200 alone shows hacking: it needs a second evaluation in a row
    assert [a.step for a in alarm.add(evals[3])] == [300]
