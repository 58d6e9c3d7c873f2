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
