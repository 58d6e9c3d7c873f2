"""The one training loop, for every method and backbone: n TA updates, then one generator update.

The loop holds no mathematics. An experiment hands it an :class:`Alignment` (generator, frozen
reference, TA, objective, and a sampler of generator inputs); the objective computes the
generator's loss, and the TA is trained by DSM (M5) on detached generator samples.

Around that core the :class:`Trainer` adds what long runs need, so every experiment gets it:
- several processes through accelerate (DDP, gloo on CPU; FSDP and DeepSpeed on GPUs, untested),
  each seeded with seed + rank, metrics averaged over the processes, only the main process writing
  files;
- gradient accumulation, mixed precision, gradient clipping, LR warmup and cosine decay;
- checkpoints under ``OUT/checkpoints/`` (see :mod:`didr.train.checkpoint`) and an exact resume:
  weights, optimisers, schedules, EMA, step and every process's RNG state are restored, so a
  resumed run on CPU is bit-identical to an uninterrupted one;
- SIGTERM / SIGINT: a checkpoint at the next step boundary, then :class:`Interrupted`;
- guards: a step with a NaN / inf reward, loss, gradient, or network output inside the objective
  (TA, reference, DRS estimator) is skipped (on every process), counted and logged with its
  source; ``max_bad_steps`` in a row stop the run with :class:`TrainingError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import Tensor, nn

from didr.diffusion.losses import dsm_loss, dsm_weighting, sample_times
from didr.errors import CheckpointError, ConfigError, DidrError, NonFiniteError
from didr.objectives.methods import Objective
from didr.progress import Progress
from didr.rewards.base import NonFiniteRewardError
from didr.train import checkpoint as ckpt
from didr.train.config import TrainConfig
from didr.train.distributed import (
    Prepared,
    any_rank,
    check_prepare,
    clip_grad_norm,
    describe,
    make_accelerator,
    reduce_logs,
    same_on_all_ranks,
    seed_all,
    shards_optimizer,
    to_device,
)
from didr.train.ema import EMA
from didr.train.metrics import MetricsLog
from didr.train.optim import make_lr_schedule, make_optimizer
from didr.train.signals import Interrupted, StopSignals


@dataclass
class Alignment:
    """Everything the loop trains or queries. ``sample_inputs(n)`` returns generator inputs (z, cond)."""

    generator: nn.Module
    reference: nn.Module
    ta: nn.Module | None
    objective: Objective
    sample_inputs: Callable[[int], tuple[Tensor, Any]]


class TrainingError(DidrError):
    """The run cannot go on (too many non-finite steps in a row)."""


class RewardStop(TrainingError, NonFiniteRewardError):
    """The run stopped because the reward kept returning NaN or inf."""


class Trainer:
    """Runs ``cfg.steps`` generator updates, each preceded by ``cfg.ta_updates`` TA updates.

    ``out_dir``: where metrics, ``train.log``, ``checkpoints/`` and ``export/`` go (None: nothing is
    written). ``resume`` (default ``cfg.resume``): continue from the latest good checkpoint there.
    ``run_config``: the whole run's configuration, stored in checkpoints and the export (default:
    ``out_dir/config.yaml`` when it exists, else the train section).
    """

    def __init__(
        self,
        alignment: Alignment,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        *,
        desc: str = "train",
        resume: bool | None = None,
        run_config: dict | None = None,
        accelerator=None,
    ):
        self.a, self.cfg, self.desc = alignment, cfg, desc
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.acc = accelerator if accelerator is not None else make_accelerator(cfg.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        seed_all(cfg.seed + self.rank)  # per-process noise; the models start equal (DDP broadcasts rank 0's)
        self.step_count, self.bad_in_a_row, self.bad_total = 0, 0, 0
        self.problem: str | None = None
        self.problem_is_reward = False
        self.run_config = run_config if run_config is not None else self._read_run_config()
        self.ref = alignment.reference.requires_grad_(False).eval().to(self.acc.device)
        self.uses_ta = alignment.ta is not None and alignment.objective.uses_ta and cfg.ta_updates > 0
        self._prepare()
        if cfg.ema_decay > 0 and shards_optimizer(self.acc):
            raise ConfigError("train.ema_decay: the EMA needs whole weights on each process; set it to 0 under FSDP / DeepSpeed")
        self.ema = EMA(alignment.generator, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.resumed_from: Path | None = None
        if (cfg.resume if resume is None else resume) and self.out_dir is not None:
            self._resume()

    # --- setup -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Optimisers and LR schedules on the plain modules, then accelerate wraps models and
        optimisers (DDP / FSDP / DeepSpeed); the schedules are stepped once per step by hand."""
        a, cfg = self.a, self.cfg
        opt_g = make_optimizer(a.generator.parameters(), cfg.lr_generator, cfg)
        self.sched_g = make_lr_schedule(opt_g, cfg)
        check_prepare(self.acc, 2 if self.uses_ta else 1)
        if self.uses_ta:
            opt_ta = make_optimizer(a.ta.parameters(), cfg.lr_ta, cfg)
            self.sched_ta = make_lr_schedule(opt_ta, cfg)
            gen, self.opt_g, ta, self.opt_ta = self.acc.prepare(a.generator, opt_g, a.ta, opt_ta)
            self.ta = Prepared(ta, a.ta)
        else:
            gen, self.opt_g = self.acc.prepare(a.generator, opt_g)
            self.opt_ta = self.sched_ta = None
            self.ta = a.ta.to(self.acc.device) if a.ta is not None else None  # a frozen TA, if any
        self.gen = Prepared(gen, a.generator)

    def _read_run_config(self) -> dict | None:
        path = self.out_dir / "config.yaml" if self.out_dir is not None else None
        if path is not None and path.is_file():
            return yaml.safe_load(path.read_text())
        return None

    @property
    def sampling_generator(self) -> nn.Module:
        """The EMA generator when there is one, else the trained one."""
        return self.ema.module if self.ema is not None else self.a.generator

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    def log_line(self, text: str) -> None:
        """A line in ``OUT/train.log`` and on stderr (main process only)."""
        if not self.is_main:
            return
        print(f"[{self.desc}] {text}", file=sys.stderr, flush=True)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "train.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    # --- one step ----------------------------------------------------------------------------

    def _inputs(self) -> tuple[Tensor, Any]:
        z, cond = self.a.sample_inputs(self.cfg.batch_size)
        return to_device(z, self.acc.device), to_device(cond, self.acc.device)

    def _sync(self, module: nn.Module, micro: int):
        """Gradients are all-reduced on the last micro-batch only."""
        return self.acc.no_sync(module) if micro < self.cfg.grad_accum - 1 else contextlib.nullcontext()

    def _bad(self, problem: str | None, from_reward: bool = False) -> bool:
        """Agree across processes whether any of them hit a non-finite value."""
        if any_rank(self.acc, problem is not None):
            self.problem = problem or "a NaN or inf on another process"
            self.problem_is_reward = from_reward
            return True
        return False

    def _apply(self, module: Prepared, opt, name: str) -> bool:
        """Clip, check the gradient, and step; False (nothing changed) if the gradient is not finite."""
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = clip_grad_norm(self.acc, module.wrapped, max_norm)
        # under fp16 the grad scaler skips overflowing steps itself
        finite = self.acc.scaler is not None or norm is None or bool(torch.isfinite(norm))
        if self._bad(None if finite else f"{name} gradient is NaN or inf"):
            opt.zero_grad(set_to_none=True)
            return False
        opt.step()
        return True

    def ta_step(self) -> dict[str, float] | None:
        """One DSM (M5) update of the TA on detached generator samples; None if skipped."""
        self.opt_ta.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(self.cfg.grad_accum):
            z, cond = self._inputs()
            with torch.no_grad(), self.acc.autocast():
                x0 = self.gen(z, cond)
            with self._sync(self.ta.wrapped, micro):
                with self.acc.autocast():
                    t = sample_times(x0.shape[0], self.ta.schedule, device=x0.device)
                    loss = dsm_loss(self.ta, x0, t, cond, weighting=dsm_weighting(self.cfg.ta_weighting)).mean()
                if self._bad(None if torch.isfinite(loss) else f"TA loss is {float(loss)}"):
                    return None
                self.acc.backward(loss / self.cfg.grad_accum)
            total += float(loss.detach()) / self.cfg.grad_accum
        return {"ta_loss": total} if self._apply(self.ta, self.opt_ta, "TA") else None

    def generator_step(self) -> dict[str, float] | None:
        """One generator update on the objective's surrogate loss; None if skipped."""
        self.opt_g.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for micro in range(self.cfg.grad_accum):
            z, cond = self._inputs()
            with self._sync(self.gen.wrapped, micro):
                problem, from_reward = None, False
                try:
                    with self.acc.autocast():
                        x0 = self.gen(z, cond)
                        loss, micro_logs = self.a.objective(x0, cond, self.ref, self.ta, z=z)
                    if not torch.isfinite(loss):
                        problem = f"generator loss is {float(loss)}"
                except NonFiniteRewardError as err:  # a wrong shape or type still stops the run
                    problem, from_reward = str(err), True
                except NonFiniteError as err:  # the TA, the reference or a DRS estimator; the message says which
                    problem = str(err)
                if self._bad(problem, from_reward):
                    return None
                self.acc.backward(loss / self.cfg.grad_accum)
            for k, v in {"generator_loss": float(loss.detach()), **micro_logs}.items():
                logs[k] = logs.get(k, 0.0) + float(v) / self.cfg.grad_accum
        if not self._apply(self.gen, self.opt_g, "generator"):
            return None
        if self.ema is not None:
            self.ema.update(self.a.generator, 0.0 if self.step_count < self.cfg.ema_start else None)
        return logs

    def step(self) -> dict[str, float]:
        """TA updates, then a generator update; a non-finite value anywhere skips the rest."""
        logs: dict[str, float] = {}
        ok = True
        self.gen.wrapped.train()  # the TA learns from what the generator trains on (a few-step one: one simulated step)
        if self.uses_ta:
            self.ta.wrapped.train()
            for _ in range(self.cfg.ta_updates):
                out = self.ta_step()
                if out is None:
                    ok = False
                    break
                logs.update(out)
            self.ta.wrapped.eval()
        if ok:
            out = self.generator_step()
            ok = out is not None
            logs.update(out or {})
        self.step_count += 1
        with warnings.catch_warnings():  # a skipped step leaves the optimiser unstepped on purpose
            warnings.simplefilter("ignore", UserWarning)
            for sched in (self.sched_g, self.sched_ta):
                if sched is not None:
                    sched.step()
        self._count(ok)
        return {**logs, "bad_steps": float(self.bad_total)}

    def _count(self, ok: bool) -> None:
        if ok:
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1
        self.bad_total += 1
        self.log_line(f"step {self.step_count} skipped ({self.bad_in_a_row} in a row, {self.bad_total} in all): {self.problem}")
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            self._stop(f"{self.bad_in_a_row} steps in a row had NaN or inf (train.max_bad_steps = {self.cfg.max_bad_steps})")

    def _stop(self, what: str) -> None:
        error = RewardStop if self.problem_is_reward else TrainingError
        raise error(f"stopped at step {self.step_count}: {what}; last: {self.problem}")

    # --- checkpoints -------------------------------------------------------------------------

    def _state_tensors(self) -> dict[str, Tensor]:
        out = {f"generator.{k}": v for k, v in self.acc.get_state_dict(self.gen.wrapped).items()}
        if self.uses_ta:
            out.update({f"ta.{k}": v for k, v in self.acc.get_state_dict(self.ta.wrapped).items()})
        if self.ema is not None:
            out.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        return out

    def _optim_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.opt_g.state_dict(), "sched_generator": self.sched_g.state_dict()}
        if self.uses_ta:
            state.update(ta=self.opt_ta.state_dict(), sched_ta=self.sched_ta.state_dict())
        if self.acc.scaler is not None:
            state["scaler"] = self.acc.scaler.state_dict()
        return state

    def _config_record(self) -> dict[str, Any]:
        return {"train": dataclasses.asdict(self.cfg), "run": self.run_config}

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every process must call it)."""
        root = self.checkpoint_dir
        if root is None:
            return None
        models = self._state_tensors()  # a collective under FSDP / DeepSpeed
        optim, sharded = self._optim_state(), shards_optimizer(self.acc)
        tmp = ckpt.begin(root, self.step_count) if self.is_main else ckpt.temp_dir(root, self.step_count)
        self.acc.wait_for_everyone()
        ckpt.write_rng(tmp, self.rank)
        if sharded:
            ckpt.write_optim_shard(tmp, self.rank, optim)
        path = root / ckpt.checkpoint_name(self.step_count)
        if self.is_main:
            ckpt.write_main(tmp, models, None if sharded else optim)
        self.acc.wait_for_everyone()
        if self.is_main:
            state = {
                "bad_steps_total": self.bad_total,
                "bad_steps_in_a_row": self.bad_in_a_row,
                "world_size": self.world,
                "config": self._config_record(),
            }
            path = ckpt.commit(tmp, root, self.step_count, state, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def _resume(self) -> None:
        found = ckpt.load_latest(self.checkpoint_dir, self.rank)
        if found is None:
            ckpt.require_usable(self.checkpoint_dir)  # some exist, none loads: refuse rather than start over
            self.log_line(f"resume: no checkpoint under {self.checkpoint_dir} yet; starting from step 0")
            return
        ckpt.check_resumable({"train": found.state.get("config", {}).get("train", {})}, {"train": dataclasses.asdict(self.cfg)}, found.path)
        saved_world = found.state.get("world_size", self.world)
        if shards_optimizer(self.acc) and saved_world != self.world:
            raise CheckpointError(f"cannot resume from {found.path}: its optimiser is sharded over {saved_world} processes; launch {saved_world}, not {self.world}")
        self._load_models(found)
        self._load_optim(found.optim)
        self.step_count = found.step
        self.bad_total = int(found.state.get("bad_steps_total", 0))
        self.bad_in_a_row = int(found.state.get("bad_steps_in_a_row", 0))
        if found.rng is not None:
            ckpt.set_rng_state(found.rng)
        else:  # saved with fewer processes: a fresh, reproducible stream for this one
            seed_all(self.cfg.seed + self.rank + 1_000_003 * found.step)
            self.log_line(f"resume: no RNG state for rank {self.rank} (saved with {found.state.get('world_size')} processes); reseeded")
        self.resumed_from = found.path
        if self.is_main:
            MetricsLog.truncate(self.out_dir, found.step)

    def _load_models(self, found: ckpt.Checkpoint) -> None:
        parts = [("generator", self.a.generator)]
        if self.uses_ta:
            parts.append(("ta", self.a.ta))
        if self.ema is not None:
            parts.append(("ema", self.ema.module))
        if shards_optimizer(self.acc):  # load through the FSDP / DeepSpeed wrappers (full state dicts)
            parts[0] = ("generator", self.gen.wrapped)
            if self.uses_ta:
                parts[1] = ("ta", self.ta.wrapped)
        for prefix, module in parts:
            sd = {k[len(prefix) + 1 :]: v for k, v in found.models.items() if k.startswith(prefix + ".")}
            try:
                module.load_state_dict(sd)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[1].strip() if "\n" in str(err) else str(err)
                raise CheckpointError(f"cannot resume from {found.path}: its {prefix} does not fit this model ({first})") from None

    def _load_optim(self, state: dict[str, Any]) -> None:
        try:
            self.opt_g.load_state_dict(state["generator"])
            self.sched_g.load_state_dict(state["sched_generator"])
            if self.uses_ta:
                self.opt_ta.load_state_dict(state["ta"])
                self.sched_ta.load_state_dict(state["sched_ta"])
            if self.acc.scaler is not None and "scaler" in state:
                self.acc.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot resume: the optimiser state does not fit this run ({err})") from None

    def export(self) -> Path | None:
        """The sampling generator as ``OUT/export/generator.safetensors`` (main process)."""
        if self.out_dir is None:
            return None
        weights = self.acc.get_state_dict(self.gen.wrapped) if self.ema is None else self.ema.module.state_dict()
        if not self.is_main:
            return None
        info = {"step": self.step_count, "ema": self.ema is not None, "world_size": self.world, "config": self._config_record()}
        return ckpt.export_generator(self.out_dir, weights, info)

    # --- the run -----------------------------------------------------------------------------

    def run(self, on_log: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        """Train to ``cfg.steps``, checkpointing on the way and at the end, then export."""
        start_note = f" (resumed from {self.resumed_from.name})" if self.resumed_from else ""
        self.log_line(f"start: step {self.step_count} of {self.cfg.steps}{start_note}; {describe(self.acc)}; "
                      f"effective batch {self.cfg.batch_size * self.cfg.grad_accum * self.world}")
        log = MetricsLog(self.out_dir if self.is_main else None)
        bar = Progress(self.cfg.steps, self.desc, initial=self.step_count, enabled=self.cfg.progress and self.is_main)
        start, logs = time.perf_counter(), {}
        saved_at = self.step_count if self.resumed_from else -1  # the checkpoint it resumed from
        first_step = self.step_count
        with StopSignals() as stop:
            try:
                while self.step_count < self.cfg.steps:
                    logs = self.step()
                    bar.update(1)
                    if self.step_count % self.cfg.log_every == 0 or self.step_count == self.cfg.steps:
                        logs = reduce_logs(self.acc, logs)
                        logs["seconds"] = time.perf_counter() - start
                        log.write(self.step_count, logs)
                        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("ta_loss", "reward", "grad_norm")})
                        if on_log is not None:
                            on_log(self.step_count, logs)
                    if self.cfg.checkpoint_every and self.step_count % self.cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                        saved_at = self.step_count
                    if any_rank(self.acc, stop.signum is not None):
                        path = self.save_checkpoint() if saved_at != self.step_count else self._latest()
                        self.log_line(f"stopped by signal at step {self.step_count}; checkpoint {path}")
                        raise Interrupted(stop.signum or signal.SIGTERM, self.step_count, path)
            finally:
                bar.close()
                log.close()
            if self.bad_in_a_row and self.bad_in_a_row >= self.step_count - first_step:
                self._stop(f"all {self.bad_in_a_row} steps of the run had NaN or inf")
            if saved_at != self.step_count:
                self.save_checkpoint()
            self.export()
        if shards_optimizer(self.acc):  # each process holds a shard: there is no per-process copy to compare
            agree = f"generator sharded over {self.world} processes ({self.acc.distributed_type.value})"
        else:
            same, digest = same_on_all_ranks(self.acc, self.a.generator)
            agree = f"generator identical on all {self.world} processes" if same else f"WARNING: generator differs across the {self.world} processes"
            agree += f" (sha256 {digest[:16]})"
        self.log_line(f"done: step {self.step_count}, {self.bad_total} skipped steps; {agree}")
        return logs

    def _latest(self) -> Path | None:
        root = self.checkpoint_dir
        return root / ckpt.checkpoint_name(self.step_count) if root is not None else None
