"""Rewards for digit images that behave like the real ones, and the gold attributes behind them.

- :class:`ClassifierReward` (prompt faithfulness): log p(c | x) of the requested digit under a small
  CNN trained on the training split; the analogue of a text-image alignment score.
- :class:`PreferenceReward`: a small network trained with the Bradley-Terry loss on pairs of real
  images whose preferred member was chosen by a noisy "annotator" looking at a hidden gold
  attribute, exactly as PickScore or ImageReward are trained from human pairwise choices. Trained
  on real images only, it can be fooled off the data manifold, which is the point: the evaluation
  reports the gold attribute too, so over-optimisation of the proxy shows.
- :func:`outside_ink`: the ink a generator puts where real digits never have any (the pixels
  outside the digits' support). ``DigitReward(ink_weight > 0)`` pays for it: a proxy with a known
  exploit, whose optimum covers the background, so that strong optimisation raises the proxy while
  the gold attribute and prompt accuracy fall (the truth against which the reward-hacking alarm,
  :mod:`didr.eval.alarm`, is validated).
- Gold attributes: :func:`thickness` (mean ink, which grows with stroke width), :func:`slant`
  (the ink's x-y shear) and :class:`Boldness`, the default: bold strokes are preferred up to the
  boldest real digits and penalised beyond. Real images almost all lie below that peak, so the
  annotator's choices, and the proxy learnt from them, say "thicker is better"; a generator that
  pushes the proxy past the peak (ink blobs) lowers the gold score, which is how reward
  over-optimisation shows (Gao et al. 2023, proxy against gold reward models).

Images are (B, 1, H, W) in [-1, 1], ink = +1; prompts are (B,) class indices or a text batch
(a dict whose ``digit`` field names the digit each prompt asks for).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from didr.errors import ConfigError
from didr.rewards.base import FrozenReward, call_reward


def thickness(images: Tensor) -> Tensor:
    """Mean ink in [0, 1] per image: for a fixed glyph, proportional to stroke width."""
    return ((images.clamp(-1, 1) + 1) / 2).reshape(images.shape[0], -1).mean(1)


def slant(images: Tensor) -> Tensor:
    """Shear of the ink distribution, cov(x, y) / var(y) with y pointing up: > 0 leans right."""
    ink = ((images.clamp(-1, 1) + 1) / 2)[:, 0]
    h, w = ink.shape[-2:]
    ys = -torch.linspace(-1, 1, h, device=ink.device)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w, device=ink.device)[None, :].expand(h, w)
    m = ink.sum((1, 2)).clamp_min(1e-6)
    mx, my = (ink * xs).sum((1, 2)) / m, (ink * ys).sum((1, 2)) / m
    cov = (ink * (xs - mx[:, None, None]) * (ys - my[:, None, None])).sum((1, 2)) / m
    var = (ink * (ys - my[:, None, None]) ** 2).sum((1, 2)) / m
    return cov / var.clamp_min(1e-6)


class Boldness:
    """gold(x) = 1 - ((thickness(x) - peak) / peak)^2, peak = the ``quantile`` of real thickness."""

    def __init__(self, real_images: Tensor, quantile: float = 0.95):
        self.peak = float(torch.quantile(thickness(real_images), quantile))

    def __call__(self, images: Tensor) -> Tensor:
        return 1 - ((thickness(images) - self.peak) / self.peak) ** 2


GOLD = ("bold", "thickness", "slant")


def gold_attribute(name: str, real_images: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The gold attribute ``name``; ``bold`` takes its peak from ``real_images``."""
    if name == "bold":
        if real_images is None:
            raise ConfigError("the bold gold attribute needs real images to place its peak")
        return Boldness(real_images)
    if name not in GOLD:
        raise ConfigError(f"unknown gold attribute {name!r}; choose one of {', '.join(GOLD)}")
    return {"thickness": thickness, "slant": slant}[name]


def digit_support(real_images: Tensor, threshold: float = 0.01) -> Tensor:
    """(H, W) bool: the pixels where the real images' mean ink in [0, 1] reaches ``threshold``."""
    return ((real_images.clamp(-1, 1) + 1) / 2).mean(dim=(0, 1)) >= threshold


def outside_ink(images: Tensor, support: Tensor) -> Tensor:
    """Mean ink in [0, 1] per image over the pixels outside ``support`` (:func:`digit_support`)."""
    background = (~support).to(images.dtype)
    ink = (images.clamp(-1, 1) + 1) / 2
    return (ink[:, 0] * background).sum((1, 2)) / background.sum().clamp_min(1.0)


class DigitCNN(nn.Module):
    """conv(3x3)-pool twice, then a ``feat_dim`` feature layer and a linear head. ``features``
    exposes the penultimate layer for FID-style distances."""

    def __init__(self, n_out: int, width: int = 32, feat_dim: int = 64, image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, feat_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feat_dim, n_out)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ClassifierReward(FrozenReward):
    """r(x, c) = log p(c | x): prompt faithfulness, differentiable."""

    name = "prompt"
    typical_range = (-10.0, 0.0)

    def __init__(self, classifier: DigitCNN):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        prompts = prompt_digits(prompts)
        logp = F.log_softmax(self.classifier(images), dim=1)
        return logp.gather(1, prompts[:, None].long()).squeeze(1)


def prompt_digits(prompts: Any) -> Tensor:
    """The digit each prompt asks for: class indices as they are, or a text batch's ``digit`` field
    (the digit its words name, recorded when the prompt set was built)."""
    if isinstance(prompts, dict) and isinstance(prompts.get("digit"), Tensor):
        return prompts["digit"]
    if isinstance(prompts, Tensor):
        return prompts
    raise ConfigError("the prompt reward needs class-index prompts, a (B,) integer tensor, or text prompts with their digit")


class PreferenceReward(FrozenReward):
    """A Bradley-Terry preference model: r(x) = (f(x) - mean) / std, standardised on the real
    training images so that one unit is one standard deviation of real-data preference."""

    name = "preference"
    typical_range = (-3.0, 3.0)

    def __init__(self, net: DigitCNN):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def raw(self, images: Tensor) -> Tensor:
        return self.net(images).squeeze(1)

    @torch.no_grad()
    def standardise_on(self, images: Tensor) -> None:
        r = torch.cat([self.raw(x) for x in images.split(512)])
        self.mean.fill_(float(r.mean()))
        self.std.fill_(float(r.std().clamp_min(1e-6)))

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        return (self.raw(images) - self.mean) / self.std


class DigitReward(FrozenReward):
    """The training reward: preference + prompt_weight * log p(c | x), plus, for the exploitable
    proxy, ink_weight * :func:`outside_ink` (``support``: the digits' pixels)."""

    name = "preference+prompt"

    def __init__(self, preference: PreferenceReward, prompt: ClassifierReward, prompt_weight: float, ink_weight: float = 0.0,
                 support: Tensor | None = None):
        super().__init__()
        self.preference, self.prompt, self.prompt_weight, self.ink_weight = preference, prompt, float(prompt_weight), float(ink_weight)
        if self.ink_weight and support is None:
            raise ConfigError("a reward that pays for ink outside the digits needs the digits' support")
        if self.ink_weight:
            self.name = "preference+prompt+outside-ink"
        if support is not None:
            self.register_buffer("support", support.bool())

    def forward(self, images: Tensor, prompts: Any = None) -> Tensor:
        return self.combine(call_reward(self.preference, images, prompts), call_reward(self.prompt, images, prompts) if self.prompt_weight else None,
                            self.outside_ink(images) if self.ink_weight else None)

    def outside_ink(self, images: Tensor) -> Tensor:
        return outside_ink(images, self.support)

    def combine(self, preference: Tensor, prompt_logp: Tensor | None, ink: Tensor | None = None) -> Tensor:
        """The reward from its terms, already computed (an evaluation that reports each)."""
        reward = preference + self.prompt_weight * prompt_logp if self.prompt_weight else preference
        return reward + self.ink_weight * ink if self.ink_weight else reward


class ClassificationBatches:
    """Cross-entropy batches for a digit classifier, with small random shifts (one pixel in 8, so
    the classifier does not rely on exact positions), drawn from ``seed``; a pre-training task
    (:func:`didr.train.pretrain.pretrain`)."""

    def __init__(self, x: Tensor, y: Tensor, batch: int = 128, seed: int = 0):
        self.x, self.y, self.batch, self.seed = x, y, batch, seed
        self.gen: torch.Generator | None = None

    def advance(self) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(0, len(self.x), (self.batch,), generator=self.gen)
        self.images, self.labels = _shift(self.x[idx], self.gen), self.y[idx]

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        return F.cross_entropy(model(self.images), self.labels)


def _shift(x: Tensor, gen: torch.Generator) -> Tensor:
    s = max(1, x.shape[-1] // 8)
    dx, dy = torch.randint(-s, s + 1, (2,), generator=gen).tolist()
    return torch.roll(x, (dy, dx), dims=(2, 3))


def bradley_terry_loss(r_a: Tensor, r_b: Tensor, a_preferred: Tensor) -> Tensor:
    """-log sigma(r_winner - r_loser), the preference-model loss (Bradley & Terry 1952)."""
    margin = torch.where(a_preferred, r_a - r_b, r_b - r_a)
    return -F.logsigmoid(margin).mean()


class PreferenceBatches:
    """Bradley-Terry batches: pairs of real images and a noisy annotator's choice between them. The
    annotator prefers image a over b with probability sigma((g_a - g_b) / (tau * std(g))), like
    human choices, and is only ever shown real images. A pre-training task."""

    def __init__(self, x: Tensor, gold: Tensor, batch: int = 128, tau: float = 0.05, seed: int = 0):
        self.x, self.gold, self.batch, self.seed = x, gold, batch, seed
        self.scale = tau * float(gold.std().clamp_min(1e-8))
        self.gen: torch.Generator | None = None

    def advance(self) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        self.a, self.b = torch.randint(0, len(self.x), (2, self.batch), generator=self.gen)
        self.choice = torch.rand(self.batch, generator=self.gen) < torch.sigmoid((self.gold[self.a] - self.gold[self.b]) / self.scale)

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        return bradley_terry_loss(model(self.x[self.a]).squeeze(1), model(self.x[self.b]).squeeze(1), self.choice)
