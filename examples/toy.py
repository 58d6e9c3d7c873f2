"""DIDR and DI++ on the paper's toy through the Python API, each measured against the exact optimum.

    python examples/toy.py                 # about a minute on one CPU thread
    python examples/toy.py --steps 20      # a smoke run

The reference and the initial one-step generator come from the toy's stages; each method then runs
through the one training loop from the same start, and its samples are compared with the exact
tilted optimum at the reward they reached (docs/method.md §7).
"""

from __future__ import annotations

import argparse
import copy

import torch

from didr.diffusion.optimum import exact_optimum
from didr.eval.toy_metrics import error_at_equal_reward
from didr.experiments.config import ToyConfig
from didr.experiments.toy.stages import generate, prepare_stages
from didr.objectives import DIDR, DIPlusPlus, DRPEstimator
from didr.rewards import SigmoidReward
from didr.train import Alignment, TrainConfig, Trainer


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="generator updates per method")
    p.add_argument("--beta", type=float, default=0.72)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    small = args.steps < 100
    toy = ToyConfig(ref_steps=200 if small else 1500, ref_batch=512, ref_lr=1e-3, distill_steps=100 if small else 800, distill_batch=512,
                    distill_lr=3e-3, eval_samples=2000 if small else 10_000)
    stages = prepare_stages(toy, seed=0, stage_dir=None, progress=False)
    reward = SigmoidReward(4.0)
    optimum = exact_optimum(toy.mixture(), reward)
    objectives = {
        "DIDR": DIDR(stages.schedule, DRPEstimator(reward, beta=args.beta, steps=4), t_max=0.4),
        "DI++": DIPlusPlus(stages.schedule, reward, alpha=0.23, t_max=0.4),  # the weight with DIDR's average push at beta 0.72 (M13)
    }
    results = {}
    for name, objective in objectives.items():
        ta = copy.deepcopy(stages.reference_net).requires_grad_(True)
        alignment = Alignment(copy.deepcopy(stages.generator), stages.reference, ta, objective, lambda n: (torch.randn(n, 1), None))
        cfg = TrainConfig(steps=args.steps, batch_size=512, ta_updates=5, lr_generator=1e-3, lr_ta=1e-3, ema_decay=0.99, progress=False)
        trainer = Trainer(alignment, cfg, desc=name)
        trainer.run()
        x = generate(trainer.sampling_generator, toy.eval_samples, dim=1, seed=5)
        results[name] = error_at_equal_reward(x, optimum, reward)
        r = results[name]
        print(f"{name:5s} mean reward {float(reward(x).mean()):.3f} (beta' {r['beta_equal']:.3g}), W1 to p* of equal reward {r['w1_equal']:.3f}")
    print(f"the exact optimum at beta {args.beta:g}: mean reward {optimum.mean_reward(args.beta):.3f}")
    return results


if __name__ == "__main__":
    main()
