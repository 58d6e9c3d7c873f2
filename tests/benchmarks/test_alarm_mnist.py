"""benchmarks/alarm_mnist.py: the alarm is scored against the truth as its docstring says, on
recorded evaluations whose onset and alarm are known."""


import pytest

from didr.eval.alarm import TRAINED, evaluation_of
from didr.eval.stats import Interval
from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("alarm_mnist")


def recorded(trained, held_out, gold, accuracy, half=0.1):
    records = []
    for i, values in enumerate(zip(trained, held_out, gold, accuracy)):
        iv = {name: Interval(v, v - half, v + half) for name, v in zip((TRAINED, "heldout_prompt", "gold", "prompt_accuracy"), values)}
        records.append({"evaluation": evaluation_of(10 * i, {k: iv[k] for k in (TRAINED, "heldout_prompt")}, 1.0).__dict__,
                        "intervals": {k: v.to_dict() for k, v in iv.items()}})
    return {"label": "run", "seed": 0, "seconds": 1.0, "records": records}


def test_a_hacked_run_is_caught_with_its_lag_and_the_kept_evaluation_is_before_the_hack(bench):
    run = recorded(trained=[0, 0.3, 0.6, 0.9, 1.2, 1.5], held_out=[0, 0.05, 0.1, -0.2, -0.4, -0.6], gold=[0.5, 0.6, 0.7, 0.4, 0.3, 0.2],
                   accuracy=[0.9] * 6)
    s = bench.score_run(run, {})
    assert s["onset"] == 30 and s["fired"] == 40 and s["kept"] == 20 and s["gold_kept"] == 0.7 and s["gold_end"] == 0.2
    assert bench.tally([s]) == {"hacked": 1, "clean": 0, "caught": 1, "early": 0, "missed": 0, "false": 0, "lag": 10.0}


def test_an_alarm_in_a_run_whose_truth_never_declines_is_false_and_one_never_raised_is_a_miss(bench):
    clean = recorded(trained=[0, 0.3, 0.6, 0.9], held_out=[0, -0.1, -0.2, -0.3], gold=[0.5, 0.6, 0.7, 0.8], accuracy=[0.9] * 4)
    missed = recorded(trained=[0, 0.3, 0.6, 0.9], held_out=[0, 0.1, 0.2, 0.3], gold=[0.5, 0.6, 0.7, 0.8], accuracy=[0.9, 0.9, 0.5, 0.4])
    t = bench.tally([bench.score_run(clean, {}), bench.score_run(missed, {})])
    assert (t["hacked"], t["clean"], t["caught"], t["missed"], t["false"]) == (1, 1, 0, 1, 1)
