"""A 2-step generator on the 1-D toy, trained with DI by DMD2's backward simulation or on forward-noised
data: the experiment behind ``benchmarks/fewstep_toy.py`` and the few-step generator's tests.

The target is q0 itself through its exact mixture denoiser (DI, no reward), so a run's error is its
W1 to q0; the generator's network and the TA start from the stages' reference network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from didr.diffusion.mixture import MixtureDenoiser, TiltedDensity
from didr.eval.toy_metrics import w1_to_density
from didr.models.generators import ForwardNoisedSteps, StepGenerator, generator_times
from didr.objectives.config import MethodConfig, build_objective
from didr.rewards.toy import parse_toy_reward
from didr.train import Alignment, TrainConfig, Trainer

#: the toy's reward; with beta = 1 its tilted density only serves to give q0 on the W1 grid
_REWARD = "sigmoid:4"


@dataclass
class Regime:
    label: str
    t_max: float  # DI's omega(t) is zero above it
    steps: int
    batch: int
    ta_updates: int


def initial_two_step(stages, renoise: str) -> StepGenerator:
    """The untrained 2-step generator: the reference network at times (1.0, its midpoint)."""
    return StepGenerator(copy.deepcopy(stages.reference_net), generator_times(stages.schedule, 1.0, 2), renoise=renoise)


def train_two_step(stages, regime: Regime, simulate: bool, renoise: str, seed: int) -> torch.nn.Module:
    """Train a 2-step generator with DI: its second step sees the first step's own output
    (``simulate``, backward simulation) or mixture samples noised to its time."""
    gen = initial_two_step(stages, renoise).requires_grad_(True)
    if not simulate:
        gen = ForwardNoisedSteps(gen.denoiser, gen.times, data=lambda n: stages.mixture.sample(n).float(), renoise=renoise)
    objective = build_objective(MethodConfig(name="di", t_max=regime.t_max), stages.schedule, parse_toy_reward(_REWARD))
    ta = copy.deepcopy(stages.reference_net).requires_grad_(True)
    alignment = Alignment(gen, MixtureDenoiser(stages.mixture, stages.schedule), ta, objective, lambda n: (torch.randn(n, 1), None))
    cfg = TrainConfig(steps=regime.steps, batch_size=regime.batch, ta_updates=regime.ta_updates, lr_generator=1e-4, lr_ta=1e-3,
                      log_every=regime.steps, progress=False, seed=seed)
    Trainer(alignment, cfg).run()
    return gen


def score_two_step(stages, gen: torch.nn.Module, seed: int) -> dict[str, float]:
    """20,000 samples through every step: W1 to q0, the mass past 0 (0.5 in q0), and whether the
    run collapsed (more than 90% of the samples on one side of 0)."""
    z = torch.randn(20000, 1, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        x = gen.eval()(z).double()
    tilted = TiltedDensity(stages.mixture, parse_toy_reward(_REWARD), beta=1.0)  # its ref_density is q0
    frac = float((x > 0).double().mean())
    return {"w1": w1_to_density(x.numpy(), tilted, tilted.ref_density.numpy()), "frac": frac, "collapsed": float(min(frac, 1 - frac) < 0.1)}
