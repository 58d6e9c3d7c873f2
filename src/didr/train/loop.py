"""The one training loop, for every method and backbone: n TA updates, then one generator update.

The loop holds no mathematics. An experiment hands it an :class:`Alignment` (generator, frozen
reference, TA, objective, and a sampler of generator inputs); the objective computes the
generator's loss, and the TA is trained by DSM (M5) on detached generator samples.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from didr.diffusion.losses import dsm_loss, sample_times
from didr.objectives.methods import Objective
from didr.train.config import TrainConfig


@dataclass
class Alignment:
    """Everything the loop trains or queries. ``sample_inputs(n)`` returns generator inputs (z, cond)."""

    generator: nn.Module
    reference: nn.Module
    ta: nn.Module | None
    objective: Objective
    sample_inputs: Callable[[int], tuple[Tensor, Any]]


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        for ema_p, p in zip(self.module.state_dict().values(), module.state_dict().values()):
            if ema_p.dtype.is_floating_point:
                ema_p.lerp_(p.detach(), 1 - d)
            else:
                ema_p.copy_(p)


class MetricsLog:
    """Metrics as JSON lines (and TensorBoard scalars when it is installed)."""

    def __init__(self, out_dir: Path | None, tensorboard: bool = True):
        self.file = None
        self.tb = None
        if out_dir is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, step: int, logs: dict[str, float]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **logs}) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in logs.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def make_optimizer(params, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )


class Trainer:
    """Runs ``cfg.steps`` generator updates, each preceded by ``cfg.ta_updates`` TA updates."""

    def __init__(self, alignment: Alignment, cfg: TrainConfig, out_dir: str | Path | None = None, *, desc: str = "train"):
        self.a, self.cfg, self.desc = alignment, cfg, desc
        self.out_dir = Path(out_dir) if out_dir is not None else None
        torch.manual_seed(cfg.seed)
        self.step_count = 0
        alignment.reference.requires_grad_(False).eval()
        self.opt_g = make_optimizer(alignment.generator.parameters(), cfg.lr_generator, cfg)
        self.uses_ta = alignment.ta is not None and alignment.objective.uses_ta and cfg.ta_updates > 0
        self.opt_ta = make_optimizer(alignment.ta.parameters(), cfg.lr_ta, cfg) if self.uses_ta else None
        self.ema = EMA(alignment.generator, cfg.ema_decay) if cfg.ema_decay > 0 else None

    @property
    def sampling_generator(self) -> nn.Module:
        """The EMA generator when there is one, else the trained one."""
        return self.ema.module if self.ema is not None else self.a.generator

    def ta_step(self) -> dict[str, float]:
        z, cond = self.a.sample_inputs(self.cfg.batch_size)
        with torch.no_grad():
            x0 = self.a.generator(z, cond)
        t = sample_times(x0.shape[0], self.a.ta.schedule, device=x0.device)
        loss = dsm_loss(self.a.ta, x0, t, cond).mean()
        self.opt_ta.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.a.ta)
        self.opt_ta.step()
        return {"ta_loss": float(loss.detach())}

    def generator_step(self) -> dict[str, float]:
        z, cond = self.a.sample_inputs(self.cfg.batch_size)
        x0 = self.a.generator(z, cond)
        loss, logs = self.a.objective(x0, cond, self.a.reference, self.a.ta, z=z)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.a.generator)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.a.generator, 0.0 if self.step_count < self.cfg.ema_start else None)
        return {"generator_loss": float(loss), **logs}

    def _clip(self, module: nn.Module) -> None:
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)

    def step(self) -> dict[str, float]:
        logs: dict[str, float] = {}
        if self.uses_ta:
            self.a.ta.train()
            for _ in range(self.cfg.ta_updates):
                logs.update(self.ta_step())
            self.a.ta.eval()
        self.a.generator.train()
        logs.update(self.generator_step())
        self.step_count += 1
        return logs

    def run(self, on_log: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        from tqdm.auto import tqdm

        log = MetricsLog(self.out_dir)
        bar = tqdm(total=self.cfg.steps, initial=self.step_count, desc=self.desc, disable=not self.cfg.progress, leave=False)
        start, logs = time.perf_counter(), {}
        try:
            while self.step_count < self.cfg.steps:
                logs = self.step()
                bar.update(1)
                if self.step_count % self.cfg.log_every == 0 or self.step_count == self.cfg.steps:
                    logs["seconds"] = time.perf_counter() - start
                    log.write(self.step_count, logs)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("ta_loss", "reward", "grad_norm")})
                    if on_log is not None:
                        on_log(self.step_count, logs)
        finally:
            bar.close()
            log.close()
        return logs
