"""One sweep description (method, strength, seed), one table of strength grids, one run pool."""

import pytest

from didr.diffusion.schedules import make_schedule
from didr.errors import ConfigError
from didr.experiments.sweep import STRENGTH_GRIDS, RunPool, Setting, at_strength, toy_strengths
from didr.objectives.config import MethodConfig


def test_the_toys_default_strengths_put_dipp_at_didrs_push():
    """DIDR's default grid is beta x (1/2, 1, 2, 4); DI++'s is, for each of those, the endpoint
    weight with the same average push (M13): about 0.23 at the toy's beta 0.72, not 1 / beta."""
    vp = make_schedule("vp-cosine")
    assert toy_strengths(MethodConfig(name="didr", beta=0.72, t_max=0.4), vp) == pytest.approx([0.36, 0.72, 1.44, 2.88])
    alphas = toy_strengths(MethodConfig(name="dipp", beta=0.72, t_max=0.4), vp)
    assert alphas == pytest.approx([0.4573, 0.2287, 0.1143, 0.0572], abs=2e-4)
    assert toy_strengths(MethodConfig(name="refl"), vp) == STRENGTH_GRIDS["toy"]["refl"]


def test_a_setting_names_its_frontier_and_strength():
    s = Setting("DIDR", "b=0.5", at_strength(MethodConfig(name="didr"), 0.5, "grid"))
    assert s.label == "DIDR b=0.5" and s.strength == 0.5
    assert Setting("DI", "", MethodConfig(name="di")).strength is None
    with pytest.raises(ConfigError, match="beta must be > 0"):
        at_strength(MethodConfig(name="didr"), 0.0, "--strengths didr")
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        at_strength(MethodConfig(name="dipp"), -1.0, "--strengths dipp")


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_pool_returns_results_in_task_order(jobs):
    seen = []
    with RunPool(jobs) as pool:
        results = pool.map(_square, [(3,), (1,), (2,)], lambda task, r: f"{task[0]}^2={r}", seen.append)
        late = pool.submit(_square, [(4,), (5,)], cost=lambda task: task[0])
        assert [f.result() for f in late] == [16, 25]
    assert results == [9, 1, 4] and sorted(seen) == ["[1/3] 3^2=9", "[2/3] 1^2=1", "[3/3] 2^2=4"] or len(seen) == 3
