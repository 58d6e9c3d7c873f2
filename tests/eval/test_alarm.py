"""The reward-hacking rule on histories whose truth is known."""

from didr.eval.alarm import Evaluation, HackingAlarm


def history(trained, held, diversity=None, noise=0.1):
    return [Evaluation(step=100 * i, trained=t, trained_noise=noise, held_out={"hps": h}, held_out_noise={"hps": noise},
                       diversity=None if diversity is None else diversity[i]) for i, (t, h) in enumerate(zip(trained, held))]


def run(evals, **kw):
    alarm = HackingAlarm(**kw)
    return alarm, [a for e in evals for a in alarm.add(e)]


def test_trained_up_and_held_out_down_fires_once_the_window_shows_it():
    alarm, fired = run(history([0, 0.2, 0.5, 0.9], [0.5, 0.5, 0.3, 0.1]))
    assert [a.kind for a in fired] == ["hacking", "hacking"] and fired[0].step == 200
    assert alarm.best().step == 0  # held-out rewards were highest at the start (ties: the earliest)


def test_both_rising_is_not_hacking_and_the_best_is_the_last():
    alarm, fired = run(history([0, 0.2, 0.5, 0.9], [0.1, 0.3, 0.5, 0.8]))
    assert fired == [] and alarm.best().step == 300


def test_changes_within_the_noise_do_not_fire():
    _, fired = run(history([0, 0.05, 0.08, 0.09], [0.5, 0.48, 0.46, 0.45]))
    assert fired == []


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
