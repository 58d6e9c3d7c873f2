"""A reward of your own, as a plain function, aligned with DIDR on the toy.

    python examples/custom_reward.py
    python examples/custom_reward.py --steps 20     # a smoke run

Any callable ``reward(x, prompts) -> (B,) tensor`` serves. With a gradient, DIDR estimates the
diffused reward score by differentiable denoising (DRP, M12); without one (``--no-gradient``: a step
at 1), by Monte Carlo over the reference's posterior (M9), which needs only reward values. The
exact optimum p* ∝ q0 exp(r / beta) is computed for any reward on the 1-D toy.
"""

from __future__ import annotations

import argparse
import copy

import torch

from didr.diffusion.optimum import exact_optimum
from didr.experiments.config import ToyConfig
from didr.experiments.toy.stages import generate, prepare_stages
from didr.objectives import DIDR, DRPEstimator, MonteCarloDRS
from didr.train import Alignment, TrainConfig, Trainer


def near_one(x: torch.Tensor, prompts=None) -> torch.Tensor:
    """Prefers samples near x = 1: a smooth bump, differentiable."""
    return torch.exp(-((x - 1.0) ** 2).sum(-1))


def past_one(x: torch.Tensor, prompts=None) -> torch.Tensor:
    """Prefers samples past x = 1: a step, with no useful gradient."""
    return (x.sum(-1) > 1.0).float()


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--no-gradient", action="store_true", help="the step reward, through the Monte-Carlo estimator")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    small = args.steps < 100
    toy = ToyConfig(ref_steps=200 if small else 1500, ref_batch=512, ref_lr=1e-3, distill_steps=100 if small else 800, distill_batch=512, distill_lr=3e-3)
    stages = prepare_stages(toy, seed=0, stage_dir=None, progress=False)
    reward = past_one if args.no_gradient else near_one
    estimator = MonteCarloDRS(reward, args.beta, samples=16, sampler_steps=8) if args.no_gradient else DRPEstimator(reward, args.beta, steps=4)
    ta = copy.deepcopy(stages.reference_net).requires_grad_(True)
    alignment = Alignment(copy.deepcopy(stages.generator), stages.reference, ta, DIDR(stages.schedule, estimator, t_max=0.4),
                          lambda n: (torch.randn(n, 1), None))
    trainer = Trainer(alignment, TrainConfig(steps=args.steps, batch_size=256, ta_updates=5, lr_generator=1e-3, lr_ta=1e-3, ema_decay=0.99,
                                             progress=False), desc=reward.__name__)
    trainer.run()
    before = float(reward(generate(stages.generator, 10_000, dim=1, seed=5)).mean())
    after = float(reward(generate(trainer.sampling_generator, 10_000, dim=1, seed=5)).mean())
    target = exact_optimum(toy.mixture(), reward).mean_reward(args.beta)
    print(f"{reward.__name__}: mean reward {before:.3f} -> {after:.3f}; the exact optimum at beta {args.beta:g}: {target:.3f}")
    return after


if __name__ == "__main__":
    main()
