"""The paper's toy experiment (method.md §5) with exact answers.

Stages, each cached under ``OUT/stages/seed<N>/`` so that reruns and frontiers skip them:
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from didr.config import require
from didr.errors import ConfigError
from didr.diffusion.losses import dsm_loss, sample_times
from didr.diffusion.mixture import GaussianMixture, MixtureDenoiser
from didr.diffusion.samplers import ddim_sample
from didr.diffusion.schedules import NoiseSchedule, make_schedule
from didr.experiments.stages import cached_module, digest
from didr.models.mlp import MLPDenoiser, MLPGenerator
from didr.objectives.config import MethodConfig, build_objective
from didr.progress import progress as progress_bar
from didr.rewards.toy import parse_toy_reward
from didr.train.config import TrainConfig
from didr.train.loop import Alignment, Trainer


@dataclass
class ToyConfig:
    """The ``toy`` section: the data mixture q_0, the reward, and the preparation stages."""

    means: list[float] | list[list[float]] = field(default_factory=lambda: [-2.0, 2.0])  # K numbers (1-D) or K lists of d
    stds: list[float] = field(default_factory=lambda: [0.5, 0.5])  # one isotropic std per mode
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    ring: int = 0  # > 0: a 2-D ring of this many equal modes instead of the 1-D mixture
    ring_radius: float = 3.0
    ring_std: float = 0.3
    reward: str = "sigmoid:4"  # sigmoid:K[:w1,...,wd] | linear:C | linear:w1,...,wd | step (no gradient: Monte-Carlo DRS only)
    schedule: str = "vp-cosine"  # vp-cosine | flow | ve
    reference: str = "trained"  # trained | exact
    hidden: int = 128
    depth: int = 3
    ref_steps: int = 10000
    ref_batch: int = 2048
    ref_lr: float = 3e-4
    teacher_steps: int = 30
    distill_steps: int = 3000
    distill_batch: int = 2048
    distill_lr: float = 1e-3
    eval_samples: int = 10000

    def validate(self, path: str = "toy") -> None:
        require(self.reference in ("trained", "exact"), f"{path}.reference", f"must be 'trained' or 'exact', got {self.reference!r}")
        require(self.schedule in ("vp-cosine", "flow", "ve"), f"{path}.schedule", f"must be vp-cosine, flow or ve, got {self.schedule!r}")
        require(self.ring >= 0, f"{path}.ring", f"must be >= 0, got {self.ring}")
        for name in ("ref_steps", "ref_batch", "teacher_steps", "distill_batch", "eval_samples", "hidden", "depth"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.distill_steps >= 0, f"{path}.distill_steps", f"must be >= 0, got {self.distill_steps}")
        mixture = self.mixture()  # raises a ConfigError for bad shapes, stds or weights
        try:
            parse_toy_reward(self.reward).direction(mixture.dim)
        except ConfigError as err:
            raise ConfigError(f"{path}.reward: {err}") from None

    def mixture(self) -> GaussianMixture:
        if self.ring:
            return GaussianMixture.ring(self.ring, self.ring_radius, self.ring_std)
        return GaussianMixture(self.means, self.stds, self.weights)


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

    def teacher_samples(self) -> torch.Tensor:
        """The reference's own samples (DDIM, ``teacher_steps``), for the report; made on demand."""
        z = torch.randn(self.eval_samples, self.mixture.dim, generator=torch.Generator().manual_seed(self.seed + 3))
        return teacher(self.reference, z, self.teacher_steps)


def sigma_data(mixture: GaussianMixture) -> float:
    second = (mixture.weights[:, None] * (mixture.means**2 + mixture.stds[:, None] ** 2)).sum(0)
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    return float((second - mean**2).mean().sqrt())


def train_reference(net: MLPDenoiser, mixture: GaussianMixture, cfg: ToyConfig, seed: int, progress: bool) -> None:
    """DSM (M5) on fresh samples of q_0, Adam, with a short cosine decay for a precise final score."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.ref_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.ref_steps, eta_min=cfg.ref_lr * 0.05)
    for _ in progress_bar(range(cfg.ref_steps), "reference (DSM)", enabled=progress):
        x0 = mixture.sample(cfg.ref_batch, gen).float()
        t = sample_times(cfg.ref_batch, net.schedule, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = dsm_loss(net, x0, t, noise=noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def teacher(reference: nn.Module, z: torch.Tensor, steps: int) -> torch.Tensor:
    """The multi-step teacher: DDIM from t_max with the generator's noise as the starting point."""
    schedule = reference.schedule
    x = z * schedule.prior_std() if schedule.name == "ve" else z
    with torch.no_grad():
        return ddim_sample(reference, x, list(schedule.sampling_grid(steps)))


def distill_generator(generator: MLPGenerator, reference: nn.Module, cfg: ToyConfig, seed: int, progress: bool) -> None:
    """Regress g(z) onto the teacher's sample from the same z (matched noise)."""
    gen = torch.Generator().manual_seed(seed + 1)
    pool = max(cfg.distill_batch * 16, 32768)
    z_pool = torch.randn(pool, generator.dim, generator=gen)
    x_pool = torch.cat([teacher(reference, z, cfg.teacher_steps) for z in z_pool.split(8192)])
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.distill_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.distill_steps, 1), eta_min=cfg.distill_lr * 0.05)
    for _ in progress_bar(range(cfg.distill_steps), "generator init", enabled=progress):
        idx = torch.randint(0, pool, (cfg.distill_batch,), generator=gen)
        loss = ((generator(z_pool[idx]) - x_pool[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


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
def generate(generator: nn.Module, n: int, dim: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return generator.eval()(z)
