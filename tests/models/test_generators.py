"""Few-step generators: sampling runs every step; training runs DMD2's backward simulation, one
step per call on the state the generator's own earlier steps reach, with no gradient through them."""

from __future__ import annotations

import pytest
import torch

from didr.diffusion.samplers import ddim_sample
from didr.diffusion.schedules import VPCosineSchedule
from didr.errors import ConfigError
from didr.experiments.toy.fewstep import Regime, initial_two_step, score_two_step, train_two_step
from didr.models.generators import ForwardNoisedSteps, StepGenerator, generator_times
from didr.models.mlp import MLPDenoiser
from tests.gloo_ranks import on_two_gloo_ranks

TIMES = [0.9, 0.6, 0.3]


class Recording(torch.nn.Module):
    """A denoiser that records each call's input, time and whether gradients were on."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser, self.calls = denoiser, []

    @property
    def schedule(self):
        return self.denoiser.schedule

    def forward(self, x, t, cond=None):
        self.calls.append((x.detach().clone(), float(t.reshape(-1)[0]), torch.is_grad_enabled()))
        return self.denoiser(x, t, cond)


def denoiser(seed: int = 0) -> MLPDenoiser:
    torch.manual_seed(seed)
    return MLPDenoiser(VPCosineSchedule(), 2, 16, 2)


def test_sampling_runs_every_step():
    den = denoiser()
    z = torch.randn(5, 2)
    with torch.no_grad():
        torch.testing.assert_close(StepGenerator(den, TIMES).eval()(z), ddim_sample(den, z, TIMES + [0.0]))
        torch.manual_seed(1)
        fresh = StepGenerator(den, TIMES, renoise="fresh").eval()(z)
        torch.manual_seed(1)
        torch.testing.assert_close(fresh, den(chain(den, z, 2, "fresh"), torch.full((5,), TIMES[-1])))


def chain(den, z, k: int, renoise: str):
    """By hand: the state at TIMES[k] after k steps (DDIM, or the prediction noised afresh)."""
    if renoise == "ddim":
        return ddim_sample(den, z, TIMES[: k + 1])
    x = z
    for t, t_next in zip(TIMES[:k], TIMES[1 : k + 1]):
        x = den.schedule.add_noise(den(x, torch.full((len(z),), t)), torch.tensor(t_next), torch.randn(z.shape))
    return x


@pytest.mark.parametrize("renoise", ["ddim", "fresh"])
def test_training_runs_one_step_on_the_generators_own_state(renoise, monkeypatch):
    for k in range(len(TIMES)):
        rec = Recording(denoiser())
        gen = StepGenerator(rec, TIMES, renoise=renoise).train()
        monkeypatch.setattr(gen, "pick_step", lambda device, k=k: k)
        z = torch.randn(4, 2)
        torch.manual_seed(3)
        out = gen(z)
        assert [grad for *_, grad in rec.calls] == [False] * k + [True]
        assert [t for _, t, _ in rec.calls] == pytest.approx(TIMES[: k + 1])
        torch.manual_seed(3)  # the state sampling's first k steps reach (with the same noise for "fresh")
        with torch.no_grad():
            state = chain(rec.denoiser, z, k, renoise)
        torch.testing.assert_close(rec.calls[-1][0], state)
        torch.testing.assert_close(out, rec.denoiser(state, torch.full((4,), TIMES[k])))
        out.sum().backward()  # the gradient reaches the weights through step k's call alone
        assert all(p.grad is not None for p in rec.denoiser.parameters() if p.requires_grad)


def test_every_step_is_drawn_about_equally():
    gen = StepGenerator(denoiser(), TIMES).train()
    torch.manual_seed(0)
    counts = torch.bincount(torch.tensor([gen.pick_step(torch.device("cpu")) for _ in range(3000)]), minlength=3)
    assert ((counts - 1000).abs() < 5 * (3000 * (1 / 3) * (2 / 3)) ** 0.5).all(), counts  # within 5 binomial sd


def test_one_step_and_unrolled_generators_run_every_step_in_training():
    den = denoiser()
    z = torch.randn(3, 2)
    with torch.no_grad():
        full = StepGenerator(den, TIMES).eval()(z)
        torch.testing.assert_close(StepGenerator(den, TIMES, unrolled=True).train()(z), full)
        torch.testing.assert_close(StepGenerator(den, [0.7]).train()(z), den(z, torch.full((3,), 0.7)))


def test_forward_noised_steps_train_on_noised_data(monkeypatch):
    rec = Recording(denoiser())
    data = torch.tensor([[3.0, -1.0]]).expand(20000, 2)
    gen = ForwardNoisedSteps(rec, TIMES, data=lambda n: data[:n]).train()
    monkeypatch.setattr(gen, "pick_step", lambda device: 2)
    gen(torch.randn(20000, 2))
    x, t, grad = rec.calls[-1]
    assert len(rec.calls) == 1 and t == pytest.approx(TIMES[2]) and grad  # no simulation: data noised to t_2
    a, s = rec.schedule.alpha(torch.tensor(t)), rec.schedule.sigma(torch.tensor(t))
    torch.testing.assert_close(x.mean(0), a * data[0], atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0), s.expand(2), atol=0.02, rtol=0)


def test_bad_times_and_rules_are_refused():
    with pytest.raises(ConfigError, match="decreasing"):
        StepGenerator(denoiser(), [0.3, 0.6])
    with pytest.raises(ConfigError, match="renoise must be one of ddim, fresh"):
        StepGenerator(denoiser(), TIMES, renoise="ancestral")
    assert generator_times(VPCosineSchedule(), 0.6, 3) == pytest.approx([0.6, 0.4, 0.2])


def _picked_steps(rank: int) -> list[int]:
    torch.manual_seed(rank)  # each process draws from its own stream, as the training loop seeds them
    gen = StepGenerator(denoiser(), TIMES)
    return [gen.pick_step(torch.device("cpu")) for _ in range(40)]


def test_processes_train_the_same_step():
    """FSDP gathers weights at every call, so every process must run the same steps."""
    picks = on_two_gloo_ranks(_picked_steps)
    assert picks[0] == picks[1] and len(set(picks[0])) == 3


# --- the toy: backward simulation against training on forward-noised data -------------------------


@pytest.fixture(scope="module")
def toy_stages():
    """The 1-D two-mode mixture of the toy, a briefly trained reference network (the TA's and the
    generator's initialisation) and the exact mixture denoiser as the DI target."""
    from didr.experiments.config import ToyConfig
    from didr.experiments.toy.stages import prepare_stages

    cfg = ToyConfig(hidden=64, depth=3, ref_steps=300, ref_batch=512, ref_lr=1e-3, distill_steps=0, eval_samples=10)
    return prepare_stages(cfg, seed=0, stage_dir=None, progress=False)


def two_step_w1(stages, simulate: bool, renoise: str, seed: int) -> float:
    """W1 to q_0 of a 2-step generator trained with DI for 150 steps (DI's omega on t <= 0.4)."""
    regime = Regime("short", t_max=0.4, steps=150, batch=128, ta_updates=2)
    return score_two_step(stages, train_two_step(stages, regime, simulate, renoise, seed), seed)["w1"]


@pytest.mark.parametrize("renoise", ["ddim", pytest.param("fresh", marks=pytest.mark.slow)])
def test_backward_simulation_matches_the_target_at_least_as_well_as_forward_noised_data(toy_stages, renoise):
    """Same budget, seeds and initialisation; only the inputs of the second step differ. Trained on
    noised data, the last step never sees what the first one actually produces, so at sampling
    time the first step's errors (here: its outputs falling into one mode) pass straight through."""
    seeds = [0, 1, 2]
    initial = score_two_step(toy_stages, initial_two_step(toy_stages, renoise), 0)["w1"]
    simulated = [two_step_w1(toy_stages, True, renoise, s) for s in seeds]
    forward = [two_step_w1(toy_stages, False, renoise, s) for s in seeds]
    print(f"{renoise}: W1 to q0, initial {initial:.3f}, backward simulation {simulated}, forward-noised data {forward}")
    assert sum(simulated) <= sum(forward), (simulated, forward)
    # and it learned: a simulation that fed each step the wrong state (e.g. pure noise) ends near 1.0
    assert sorted(simulated)[1] <= 0.6 * initial, (initial, simulated)
