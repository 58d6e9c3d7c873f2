"""The digits' reward stages: the prompt classifier, the evaluation classifier (whose features
define the FIDs, so no method is scored by the network it optimised) and the Bradley-Terry
preference model, trained on the training split through the one pre-training loop and cached under
``OUT/stages/``. With several processes they train in another process beside the reference, from
the same RNG state, so the networks are the same."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from didr.data.digits import DigitData, load_digit_data
from didr.experiments.config import DigitsConfig
from didr.experiments.stages import cached_module, is_cached
from didr.files import digest
from didr.rewards.digits import ClassificationBatches, DigitCNN, PreferenceBatches, PreferenceReward, gold_attribute
from didr.runtime import process_pool
from didr.train.pretrain import pretrain


def data_key(cfg: DigitsConfig, seed: int) -> str:
    return digest({"dataset": cfg.dataset, "holdout": cfg.holdout, "seed": seed})


def reward_keys(cfg: DigitsConfig, data_key: str) -> dict[str, str]:
    """The cache keys of the reward stages (both classifiers share one)."""
    return {"classifier": digest({"data": data_key, "classifier_steps": cfg.classifier_steps}),
            "preference": digest({"data": data_key, "preference_steps": cfg.preference_steps, "preference_tau": cfg.preference_tau, "gold": cfg.gold})}


def train_classifier(net: nn.Module, x: Tensor, y: Tensor, steps: int, seed: int) -> None:
    """Cross-entropy on shifted images, Adam (lr 2e-3) with a cosine decay to 0."""
    net.train()
    pretrain(net, ClassificationBatches(x, y, seed=seed), steps=steps, lr=2e-3, lr_floor=0.0, progress=False)
    net.eval()


def train_preference(net: nn.Module, x: Tensor, gold: Tensor, steps: int, tau: float = 0.05, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """A Bradley-Terry model fitted to a noisy annotator's choices between real images (constant
    lr); returned frozen."""
    net.requires_grad_(True).train()
    pretrain(net, PreferenceBatches(x, gold, tau=tau, seed=seed), steps=steps, lr=lr, lr_floor=None, progress=False)
    return net.eval().requires_grad_(False)


def reward_stages(cfg: DigitsConfig, data: DigitData, data_key: str, path: Callable[[str], Path | None], seed: int):
    """The prompt classifier, the evaluation classifier and the preference model, trained on the
    training split from the global RNG's current state (or loaded); with the gold attribute and
    the stages' cache keys."""
    size = data.shape[-1]
    keys = reward_keys(cfg, data_key)
    classifier, eval_classifier = DigitCNN(data.n_classes, 32, 64, size), DigitCNN(data.n_classes, 24, 32, size)
    x, y = data.train_x, data.train_y
    cached_module(path("classifier"), keys["classifier"], classifier, lambda: train_classifier(classifier, x, y, cfg.classifier_steps, seed + 1))
    cached_module(path("eval_classifier"), keys["classifier"], eval_classifier, lambda: train_classifier(eval_classifier, x, y, cfg.classifier_steps, seed + 2))
    preference = PreferenceReward(DigitCNN(1, 16, 32, size))
    gold = gold_attribute(cfg.gold, x)

    def fit_preference() -> None:
        train_preference(preference.net, x, gold(x), cfg.preference_steps, tau=cfg.preference_tau, seed=seed + 3)
        preference.standardise_on(x)

    cached_module(path("preference"), keys["preference"], preference, fit_preference)
    return classifier, eval_classifier, preference, gold, keys


def heldout_classifier(cfg: DigitsConfig, data: DigitData, data_key: str, stage_dir: Path | None, seed: int) -> DigitCNN:
    """A third classifier, of another width, initialised and trained from seeds of its own: the
    held-out reward of a run's evaluations (log p(c | x) under a network the run never trains on,
    as PickScore is beside a run trained on HPS). Cached under ``stage_dir`` when given."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + 7)
        net = DigitCNN(data.n_classes, 16, 48, data.shape[-1])
    key = digest({"data": data_key, "classifier_steps": cfg.classifier_steps, "width": 16, "feat_dim": 48})
    path = stage_dir / "heldout_classifier.safetensors" if stage_dir is not None else None
    cached_module(path, key, net, lambda: train_classifier(net, data.train_x, data.train_y, cfg.classifier_steps, seed + 8))
    return net.eval().requires_grad_(False)


def rewards_cached(cfg: DigitsConfig, data_key: str, stage_dir: Path) -> bool:
    keys = reward_keys(cfg, data_key)
    stages = {"classifier": keys["classifier"], "eval_classifier": keys["classifier"], "preference": keys["preference"]}
    return all(is_cached(stage_dir / f"{name}.safetensors", key) for name, key in stages.items())


def rewards_aside(cfg: DigitsConfig, seed: int, stage_dir: Path, rng: Tensor):
    """(executor, future): the rewards trained (or found cached) in a spawned process from the
    RNG state ``rng``. What a process is sent should be a copy: its feeder thread moves tensors
    into shared memory while the sender goes on computing with them."""
    executor = process_pool(1)
    return executor, executor.submit(_reward_task, asdict(cfg), seed, str(stage_dir), rng.clone())


def _reward_task(cfg: dict, seed: int, stage_dir: str, rng: Tensor) -> None:
    digits = DigitsConfig(**cfg)
    torch.set_num_threads(digits.threads)
    data = load_digit_data(digits.dataset, digits.holdout, seed)
    torch.set_rng_state(rng)
    reward_stages(digits, data, data_key(digits, seed), lambda name: Path(stage_dir) / f"{name}.safetensors", seed)
