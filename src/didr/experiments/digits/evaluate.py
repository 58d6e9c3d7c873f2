"""Scoring a digits generator's samples against the held-out split: the reward and its terms, the
hidden gold attribute, prompt accuracy, FIDs (to real images and to the empirical optimum of equal
reward), precision and recall."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from didr.eval import image_metrics as im
from didr.experiments.digits.prompts import split_cond
from didr.experiments.digits.stages import DigitStages
from didr.rewards.base import call_reward

EVAL_SEED = 12345  # the evaluation inputs (z, prompts), the same for every method


@dataclass(frozen=True)
class PerImage:
    """Per sample: the reward and its terms, the gold attribute, whether the evaluation classifier
    recognises the prompt's digit, and the evaluation classifier's features."""

    rewards: dict[str, Tensor]
    gold: Tensor
    prompt_correct: Tensor
    features: Tensor


@torch.no_grad()
def sample_rewards(stages: DigitStages, images: Tensor, cond: Any) -> dict[str, Tensor]:
    """Per sample: the reward and its terms (the images clamped to [-1, 1] first)."""
    s, x = stages, images.clamp(-1, 1)
    chunks = list(zip(x.split(500), split_cond(cond, 500)))
    rewards = {name: torch.cat([call_reward(fn, xx, cc) for xx, cc in chunks]) for name, fn in (("preference", s.preference), ("prompt_logp", s.reward.prompt))}
    if s.reward.ink_weight:
        rewards["outside_ink"] = s.reward.outside_ink(x)
    return {"reward": s.reward.combine(rewards["preference"], rewards["prompt_logp"], rewards.get("outside_ink")), **rewards}  # its parts, not a second pass


@torch.no_grad()
def per_image(stages: DigitStages, images: Tensor, cond: Any) -> PerImage:
    """What the benchmark's evaluation measures of each sample (no held-out set needed)."""
    x = images.clamp(-1, 1)
    feats = im.features(stages.eval_classifier, x)
    correct = (stages.eval_classifier.head(feats.float()).argmax(1) == stages.prompts.digits(cond)).double()  # the features' own head
    return PerImage(sample_rewards(stages, x, cond), stages.gold(x), correct, feats)


class Evaluator:
    """Scores sample sets against the held-out split. Samples are clamped to [-1, 1] first, as an
    image would be on saving; the held-out features and rewards are computed once.

    FID p* is the distance to the empirical optimum of equal reward (docs/method.md §7): the held-out
    images reweighted by exp(r / beta') within each class, with beta' solved so that the weighted
    mean reward equals the sample set's own; its effective sample size is reported with it.
    """

    def __init__(self, stages: DigitStages):
        self.s = stages
        real, labels = stages.data.test_x, stages.data.test_y
        self.real_feats = im.features(stages.eval_classifier, real)
        with torch.no_grad():
            self.real_rewards = torch.cat([call_reward(stages.reward, xx, yy) for xx, yy in zip(real.split(500), labels.split(500))])

    def rewards(self, images: Tensor, cond: Any) -> dict[str, Tensor]:
        return sample_rewards(self.s, images, cond)

    def per_image(self, images: Tensor, cond: Any) -> PerImage:
        return per_image(self.s, images, cond)

    @torch.no_grad()
    def __call__(self, images: Tensor, cond: Any) -> dict[str, float]:
        s = self.s
        per = self.per_image(images, cond)
        rewards, feats = per.rewards, per.features
        precision, recall = im.knn_precision_recall(self.real_feats, feats)
        gold = float(per.gold.mean())
        beta = im.matched_temperature(self.real_rewards, s.data.test_y, float(rewards["reward"].mean()))
        weights = im.tilted_weights(self.real_rewards, s.data.test_y, beta)
        return {
            **{k: float(v.mean()) for k, v in rewards.items()},
            "gold": gold,
            "gold_deficit": 1.0 - gold,
            "prompt_accuracy": float(per.prompt_correct.mean()),
            "fid_real": im.frechet_distance(feats, self.real_feats),
            "fid_opt": im.frechet_distance(feats, self.real_feats, weights) if math.isfinite(beta) else math.nan,
            "opt_beta": beta,
            "opt_ess": im.effective_sample_size(weights) if math.isfinite(beta) else math.nan,
            "precision": precision,
            "recall": recall,
        }

    @torch.no_grad()
    def prompt_accuracy(self, images: Tensor, cond: Any) -> float:
        return im.prompt_accuracy(self.s.eval_classifier, images.clamp(-1, 1), self.s.prompts.digits(cond))
