"""The fidelity any optimum pays at a given reward: the floor under FID to real images.

The RLHF optimum p*_beta' (M6) is the data tilted by exp(r / beta'); at a reward above the data's it
differs from the untilted data, so even an exact sampler of it has an FID to held-out images above
zero. A run's FID real at reward R therefore splits into that floor and an excess (docs/method.md §7):

- **the floor, sampled like a run** (``opt_*``): the training images (independent of the held-out
  split) tilted within each class at the beta' whose weighted mean reward is R, drawn like a run's
  samples (about ``eval_samples`` of them, without repeats: probability proportional to the weight,
  capped at 1, with Horvitz-Thompson weights where capped) and scored exactly as a run is: FID
  real, precision and recall against the held-out images. Averaged over ``draws`` draws.
- **the floor from the held-out images** (``floor_*``, the cross-check): the held-out images
  tilted at beta' (the FID p* reference) against themselves untilted (``floor_fid_raw``); its
  small-sample bias is the mean FID of untilted random subsets of the held-out images of the
  tilted set's effective size (``floor_bias``), so ``floor_fid`` = raw - bias estimates FID(p*, data)
  itself. A run of n samples adds its own sampling bias, the FID of n real training images
  (``real (train)``), so ``floor_fid`` + that should agree with ``opt_fid_real``.

``excess_fid`` = FID real - ``opt_fid_real`` is what a run pays beyond the optimum of its own
reward; below 0, the run is nearer the untilted data than the optimum is, so it reached its reward
some other way than the optimum does (FID p* measures that).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from didr.eval import image_metrics as im
from didr.rewards.base import call_reward

#: what the floor adds to a row (and an excess per run): see the module's docstring
FLOOR_KEYS = ("opt_beta_train", "opt_fid_real", "opt_precision", "opt_recall", "opt_size", "floor_fid_raw", "floor_bias", "floor_fid")


def knn_radii(x: Tensor, k: int = 3) -> Tensor:
    """Each point's distance to its k-th nearest other point (the k-NN manifold's ball radii)."""
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # k + 1: the point itself is its own nearest


def weighted_precision_recall(real: Tensor, fake: Tensor, weights: Tensor, real_radii: Tensor | None = None, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (:func:`didr.eval.image_metrics.knn_precision_recall`) with a
    weight per fake sample in the precision (the fake set's mass inside the real manifold); the
    recall is the fraction of real samples inside the fake set's manifold. ``real_radii``: the real
    set's radii, when computed once for many fake sets."""
    real, fake = real.double(), fake.double()
    radii = knn_radii(real, k) if real_radii is None else real_radii
    d = torch.cdist(fake, real)
    inside = (d <= radii[None]).any(1).double()
    w = weights.double() / weights.sum()
    return float((w * inside).sum()), float((d.T <= knn_radii(fake, k)[None]).any(1).double().mean())


def pps_draw(weights: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Poisson sampling with inclusion probability proportional to ``weights`` (expected size
    ``n``, each capped at 1): the indices drawn and their Horvitz-Thompson weights w / pi, so that
    weighted statistics of the draw estimate those of the weighted set, without repeated images."""
    w = weights.double() / weights.sum()
    c = n  # find c with sum(min(1, c w)) = n by a few fixed-point steps (the capped ones shrink the rest)
    for _ in range(50):
        pi = (c * w).clamp(max=1.0)
        capped = pi >= 1.0
        free = w[~capped].sum()
        if free <= 0:
            break
        c = (n - int(capped.sum())) / float(free)
    pi = (c * w).clamp(max=1.0)
    keep = torch.rand(len(w), generator=gen, dtype=torch.float64) < pi
    idx = torch.nonzero(keep).reshape(-1)
    return idx, (w[idx] / pi[idx]).float()


class OptimumFloor:
    """The floor under FID real at any reward, for one benchmark's stages (see the module docstring)."""

    def __init__(self, stages, heldout_feats: Tensor, heldout_rewards: Tensor, draws: int = 5, seed: int = 0):
        self.s, self.draws, self.seed = stages, draws, seed
        self.held_feats, self.held_rewards, self.held_labels = heldout_feats, heldout_rewards, stages.data.test_y
        train, self.train_labels = stages.data.train_x, stages.data.train_y
        self.train_feats = im.features(stages.eval_classifier, train)
        with torch.no_grad():
            self.train_rewards = torch.cat([call_reward(stages.reward, x, y) for x, y in zip(train.split(500), self.train_labels.split(500))])
        self.n = stages.cfg.eval_samples
        self.held_radii = knn_radii(self.held_feats.double())
        self._cache: dict[float, dict[str, float]] = {}

    def __call__(self, reward: float) -> dict[str, float]:
        """The floor figures at mean reward ``reward`` (NaN above what the images' best reach)."""
        key = round(float(reward), 6)
        if key not in self._cache:
            self._cache[key] = {**self.sampled(key), **self.heldout(key)}
        return self._cache[key]

    def sampled(self, reward: float) -> dict[str, float]:
        beta = im.matched_temperature(self.train_rewards, self.train_labels, reward)
        if math.isnan(beta):
            return {k: math.nan for k in ("opt_beta_train", "opt_fid_real", "opt_precision", "opt_recall", "opt_size")}
        weights = im.tilted_weights(self.train_rewards, self.train_labels, beta)
        gen = torch.Generator().manual_seed(self.seed)
        fids, precisions, recalls, sizes = [], [], [], []
        for _ in range(self.draws):
            idx, ht = pps_draw(weights, self.n, gen)
            feats = self.train_feats[idx]
            fids.append(im.frechet_distance(self.held_feats, feats, ht))
            precision, recall = weighted_precision_recall(self.held_feats, feats, ht, self.held_radii)
            precisions.append(precision)
            recalls.append(recall)
            sizes.append(len(idx))
        return {"opt_beta_train": beta, "opt_fid_real": float(np.mean(fids)), "opt_precision": float(np.mean(precisions)),
                "opt_recall": float(np.mean(recalls)), "opt_size": float(np.mean(sizes))}

    def heldout(self, reward: float) -> dict[str, float]:
        beta = im.matched_temperature(self.held_rewards, self.held_labels, reward)
        if math.isnan(beta):
            return {"floor_fid_raw": math.nan, "floor_bias": math.nan, "floor_fid": math.nan}
        weights = im.tilted_weights(self.held_rewards, self.held_labels, beta)
        raw = im.frechet_distance(self.held_feats, self.held_feats, weights) if math.isfinite(beta) else 0.0
        size = int(round(im.effective_sample_size(weights)))
        gen = torch.Generator().manual_seed(self.seed + 1)
        n = len(self.held_feats)
        bias = 0.0 if size >= n else float(np.mean([im.frechet_distance(self.held_feats, self.held_feats[torch.randperm(n, generator=gen)[:size]])
                                                     for _ in range(self.draws * 4)]))
        return {"floor_fid_raw": raw, "floor_bias": bias, "floor_fid": raw - bias}


def add_floor(rows: list[dict], floor: OptimumFloor) -> None:
    """Add the floor at each row's own mean reward, and its excess, to every scored row."""
    for row in rows:
        if "reward" not in row or row["family"] == "real":
            continue
        row.update(floor(row["reward"]))
        row["excess_fid"] = row["fid_real"] - row["opt_fid_real"]
        row["excess_recall"] = row["opt_recall"] - row["recall"]
