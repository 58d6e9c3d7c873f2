"""The toy's stages, each cached under ``OUT/stages/seed<N>/`` so that reruns and frontiers skip them:

1. the reference: an MLP denoiser trained by DSM (M5) on samples of the mixture q_0, or the exact
   mixture denoiser (``reference: exact``), which isolates the alignment method's own error;
2. the initial one-step generator: regression onto 30-step DDIM samples of the reference with
   matched noise;
3. alignment: the one training loop (didr.train) with the configured objective, TA = a copy of the
   trained reference network.

Every generator is then compared with the exact tilted optimum p* (M6).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from didr.diffusion.losses import dsm_loss, sample_times
from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.samplers import ddim_sample
from didr.diffusion.schedules import NoiseSchedule, make_schedule
from didr.experiments.config import ToyConfig
from didr.experiments.stages import cached_module
from didr.files import digest
from didr.models.mlp import MLPDenoiser, MLPGenerator
from didr.objectives.config import MethodConfig, build_objective
from didr.train.config import TrainConfig
from didr.train.loop import Alignment, Trainer
from didr.train.pretrain import Regression, pretrain


@dataclass
class ToyStages:
    """What the preparation stages produce, shared by every method of a run."""

    mixture: GaussianMixture
    schedule: NoiseSchedule
    reference: nn.Module  # the target's reference denoiser (trained network or exact)
    reference_net: MLPDenoiser  # the trained network, the TA's initialisation
    generator: MLPGenerator  # the initial one-step generator
    eval_samples: int
    seed: int
    teacher_steps: int = 30

    def teacher_samples(self) -> Tensor:
        """The reference's own samples (DDIM, ``teacher_steps``), for the report; made on demand."""
        z = torch.randn(self.eval_samples, self.mixture.dim, generator=torch.Generator().manual_seed(self.seed + 3))
        return teacher(self.reference, z, self.teacher_steps)


def sigma_data(mixture: GaussianMixture) -> float:
    second = (mixture.weights[:, None] * (mixture.means**2 + mixture.stds[:, None] ** 2)).sum(0)
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    return float((second - mean**2).mean().sqrt())


class MixtureDSM:
    """DSM (M5) batches drawn fresh from the mixture: samples, noise levels and noise, from ``seed``."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, batch: int, seed: int):
        self.mixture, self.schedule, self.batch, self.seed = mixture, schedule, batch, seed
        self.gen: torch.Generator | None = None

    def advance(self) -> None:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(self.seed)
        self.x0 = self.mixture.sample(self.batch, self.gen).float()
        self.t = sample_times(self.batch, self.schedule, generator=self.gen)
        self.noise = torch.randn(self.x0.shape, generator=self.gen)

    def loss(self, model: nn.Module, shard: int) -> Tensor:
        return dsm_loss(model, self.x0, self.t, noise=self.noise).mean()


def train_reference(net: MLPDenoiser, mixture: GaussianMixture, cfg: ToyConfig, seed: int, progress: bool) -> None:
    """DSM (M5) on fresh samples of q_0, with a short cosine decay for a precise final score."""
    pretrain(net, MixtureDSM(mixture, net.schedule, cfg.ref_batch, seed), steps=cfg.ref_steps, lr=cfg.ref_lr, desc="reference (DSM)", progress=progress)


def teacher(reference: nn.Module, z: Tensor, steps: int) -> Tensor:
    """The multi-step teacher: DDIM from t_max with the generator's noise as the starting point."""
    schedule = reference.schedule
    x = z * schedule.prior_std() if schedule.name == "ve" else z
    with torch.no_grad():
        return ddim_sample(reference, x, list(schedule.sampling_grid(steps)))


def distill_generator(generator: MLPGenerator, reference: nn.Module, cfg: ToyConfig, seed: int, progress: bool) -> None:
    """Regress g(z) onto the teacher's sample from the same z (matched noise): the pool's noise and
    then the batches are drawn from one stream seeded with ``seed + 1``."""
    gen = torch.Generator().manual_seed(seed + 1)
    size = max(cfg.distill_batch * 16, 32768)
    z = torch.randn(size, generator.dim, generator=gen)
    pool = {"z": z, "x": torch.cat([teacher(reference, zz, cfg.teacher_steps) for zz in z.split(8192)])}
    pretrain(generator, Regression(pool, cfg.distill_batch, generator=gen), steps=cfg.distill_steps, lr=cfg.distill_lr,
             desc="generator init", progress=progress)


def prepare_stages(cfg: ToyConfig, seed: int, stage_dir: Path | None, progress: bool = True) -> ToyStages:
    """The reference and the initial generator of ``seed``, from ``stage_dir/seed<seed>/`` when
    they were made there with the same settings, else trained and saved there (None: not cached)."""
    mixture = cfg.mixture()
    seed_dir = stage_dir / f"seed{seed}" if stage_dir is not None else None
    schedule = make_schedule(cfg.schedule)
    torch.manual_seed(seed)
    net = MLPDenoiser(schedule, mixture.dim, cfg.hidden, cfg.depth, sigma_data=sigma_data(mixture))
    base = {k: v for k, v in asdict(cfg).items() if k not in ("reward", "eval_samples", "reference")}
    ref_key = digest({**{k: base[k] for k in base if not k.startswith(("distill", "teacher"))}, "seed": seed})
    path = seed_dir / "reference.safetensors" if seed_dir else None
    cached_module(path, ref_key, net, lambda: train_reference(net, mixture, cfg, seed, progress))
    net.requires_grad_(False).eval()
    reference = MixtureDenoiser(mixture, schedule) if cfg.reference == "exact" else net

    torch.manual_seed(seed + 2)
    generator = MLPGenerator(mixture.dim, cfg.hidden, cfg.depth)
    gen_key = digest({**base, "reference": cfg.reference, "seed": seed})
    path = seed_dir / f"generator_init_{cfg.reference}.safetensors" if seed_dir else None
    cached_module(path, gen_key, generator, lambda: distill_generator(generator, reference, cfg, seed, progress))
    return ToyStages(mixture, schedule, reference, net, generator, cfg.eval_samples, seed, cfg.teacher_steps)


def align(stages: ToyStages, method: MethodConfig, train: TrainConfig, reward, out_dir: Path | None = None, desc: str | None = None) -> nn.Module:
    """Run one method through the training loop; returns the (EMA) trained generator."""
    generator = copy.deepcopy(stages.generator)
    ta = copy.deepcopy(stages.reference_net).requires_grad_(True)
    initial = copy.deepcopy(stages.generator).requires_grad_(False).eval()
    objective = build_objective(method, stages.schedule, reward, mixture=stages.mixture, initial_generator=initial)
    dim = stages.mixture.dim
    alignment = Alignment(generator, stages.reference, ta, objective, lambda n: (torch.randn(n, dim), None))
    trainer = Trainer(alignment, train, out_dir, desc=desc or method.name)
    trainer.run()
    return trainer.sampling_generator


@torch.no_grad()
def generate(generator: nn.Module, n: int, dim: int, seed: int) -> Tensor:
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return generator.eval()(z)
