"""The one training loop, for every method and backbone: n TA updates, then one generator update.

The loop holds no mathematics. An experiment hands it an :class:`Alignment` (generator, frozen
reference, TA, objective, and a sampler of generator inputs); the objective computes the
generator's loss, and the TA is trained by DSM (M5) on detached generator samples.

Around that core the :class:`Trainer` adds what long runs need, so every experiment gets it:
- several processes: data parallelism through accelerate (DDP), or sharded training with FSDP2
  (:mod:`didr.train.fsdp`), on CPUs with gloo as on GPUs; metrics averaged over the processes, only
  the main process writing whole files;
- one random stream per slot of the global batch (:mod:`didr.train.streams`), so that two processes
  and one process accumulating two micro-batches draw the same numbers;
- gradient accumulation, mixed precision, gradient clipping, LR warmup and cosine decay;
- checkpoints under ``OUT/checkpoints/`` (see :mod:`didr.train.checkpoint`) and an exact resume:
  weights, optimisers, schedules, EMA, step and every slot's RNG state are restored, so a resumed
  run on CPU is bit-identical to an uninterrupted one, on any number of processes;
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
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import Tensor, nn

from didr.diffusion.losses import dsm_loss, dsm_weighting, sample_times
from didr.errors import CheckpointError, ConfigError, NonFiniteError
from didr.progress import Progress
from didr.rewards.base import NonFiniteRewardError
from didr.train import checkpoint as ckpt
from didr.train import state as saved_state
from didr.train.alignment import Alignment, RewardStop, TrainingError
from didr.train.config import TrainConfig
from didr.train.distributed import Prepared, any_rank, clip_grad_norm, describe, make_accelerator, reduce_logs, same_on_all_ranks, to_device
from didr.train.ema import EMA
from didr.train.evaluation import EvalOutcome, RunEvaluation
from didr.train.fsdp import Sharded, ShardingPlan, full_state_dict, grad_norm, plan_from_launch
from didr.train.metrics import MetricsLog, plot_run_curves
from didr.train.optim import make_lr_schedule, make_optimizer
from didr.train.signals import Interrupted, StopSignals
from didr.train.streams import RandomStreams, batch_split_note


class Trainer:
    """Runs ``cfg.steps`` generator updates, each preceded by ``cfg.ta_updates`` TA updates.

    ``out_dir``: where metrics, ``train.log``, ``checkpoints/`` and ``export/`` go (None: nothing is
    written). ``resume`` (default ``cfg.resume``): continue from the latest good checkpoint there.
    ``run_config``: the whole run's configuration, stored in checkpoints and the export (default:
    ``out_dir/config.yaml`` when it exists, else the train section). ``sharding``: shard the
    networks with FSDP2 (default: as the launch's accelerate preset asks, :func:`plan_from_launch`).
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
        sharding: ShardingPlan | None = None,
        evaluate: Callable[[nn.Module, int], EvalOutcome] | None = None,
    ):
        self.a, self.cfg, self.desc = alignment, cfg, desc
        self.evaluate = evaluate  # the experiment's held-out evaluation, every cfg.eval_every steps (didr.train.evaluation)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.acc = accelerator if accelerator is not None else make_accelerator(cfg.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.plan = (sharding or plan_from_launch()) if self.world > 1 else None  # one process has nothing to shard
        self._check_sharding()
        self.streams = RandomStreams(cfg.seed, self.rank, cfg.grad_accum)  # per-slot noise; the models start equal
        self.step_count, self.bad_in_a_row, self.bad_total = 0, 0, 0
        self.problem: str | None = None
        self.problem_is_reward = False
        self.run_config = run_config if run_config is not None else self._read_run_config()
        self.ref = alignment.reference.requires_grad_(False).eval().to(self.acc.device)
        self.uses_ta = alignment.ta is not None and alignment.objective.uses_ta and cfg.ta_updates > 0
        self.sharded: Sharded | None = None
        self._prepare()
        self.ema = EMA(alignment.generator, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.resumed_from: Path | None = None
        if (cfg.resume if resume is None else resume) and self.out_dir is not None:
            self._resume()

    # --- setup -------------------------------------------------------------------------------

    def _check_sharding(self) -> None:
        if self.plan is None:
            return
        if self.cfg.ema_decay > 0:
            raise ConfigError("train.ema_decay: the EMA needs whole weights on each process; set it to 0 under FSDP2")
        if self.cfg.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision: fp16's grad scaler would skip steps on one process and not another under FSDP2; use bf16")

    def _prepare(self) -> None:
        """Optimisers and LR schedules; under data parallelism accelerate then wraps models and
        optimisers (DDP), under FSDP2 the networks are sharded first and the optimisers built on the
        shards. The schedules are stepped once per step by hand."""
        if self.plan is not None:
            self._prepare_sharded()
            return
        a, cfg = self.a, self.cfg
        opt_g = make_optimizer(a.generator.parameters(), cfg.lr_generator, cfg)
        self.sched_g = make_lr_schedule(opt_g, cfg)
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

    def _prepare_sharded(self) -> None:
        a, cfg = self.a, self.cfg
        roles = [m for m in (a.generator, a.ta, a.reference) if m is not None]
        self.sharded = Sharded(a.all_networks(), roles, self.plan, self.acc.device)
        self.sharded.check_trained(a.generator, "generator")
        self.opt_g = make_optimizer(a.generator.parameters(), cfg.lr_generator, cfg)
        self.sched_g = make_lr_schedule(self.opt_g, cfg)
        self.gen = Prepared(a.generator, a.generator)
        self.opt_ta = self.sched_ta = None
        self.ta = a.ta
        if self.uses_ta:
            self.sharded.check_trained(a.ta, "TA")
            self.opt_ta = make_optimizer(a.ta.parameters(), cfg.lr_ta, cfg)
            self.sched_ta = make_lr_schedule(self.opt_ta, cfg)
            self.ta = Prepared(a.ta, a.ta)

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
        """Under DDP gradients are all-reduced on the last micro-batch only; FSDP2 reduce-scatters
        every micro-batch's, so that no process holds a whole unsharded gradient between them."""
        if self.sharded is not None or micro == self.cfg.grad_accum - 1:
            return contextlib.nullcontext()
        return self.acc.no_sync(module)

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
        if self.sharded is not None:
            norm = grad_norm([p for p in module.module.parameters() if p.requires_grad], max_norm)
        else:
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
            self.streams.switch(self.streams.slots[micro])
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
            self.streams.switch(self.streams.slots[micro])
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

    def _roles(self) -> dict[str, nn.Module]:
        """The modules whose weights a checkpoint keeps, by the name of their tensors' prefix."""
        roles = {"generator": self.a.generator}
        if self.uses_ta:
            roles["ta"] = self.a.ta
        if self.ema is not None:
            roles["ema"] = self.ema.module
        return roles

    def _optimizers(self) -> dict[str, tuple[Any, Any, nn.Module]]:
        out = {"generator": (self.opt_g, self.sched_g, self.a.generator)}
        if self.uses_ta:
            out["ta"] = (self.opt_ta, self.sched_ta, self.a.ta)
        return out

    def _checkpoint_contents(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The tensors (whole, or this process's shards) and the plain values of a checkpoint."""
        tensors, record = saved_state.role_tensors(self._roles()), {}
        for role, (opt, sched, module) in self._optimizers().items():
            opt_tensors, record[role] = saved_state.optimizer_entries(role, opt, module)
            tensors.update(opt_tensors)
            record[f"sched_{role}"] = sched.state_dict()
        if self.acc.scaler is not None:
            record["scaler"] = self.acc.scaler.state_dict()
        return tensors, record

    def _config_record(self) -> dict[str, Any]:
        return {"train": dataclasses.asdict(self.cfg), "run": self.run_config}

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every process must call it).
        Each process writes its own shards and its slots' random streams; the main process the
        whole tensors and ``state.json``."""
        root = self.checkpoint_dir
        if root is None:
            return None
        tensors, record = self._checkpoint_contents()
        tmp = ckpt.begin(root, self.step_count) if self.is_main else ckpt.temp_dir(root, self.step_count)
        self.acc.wait_for_everyone()
        layout = ckpt.write_tensors(tmp, self.rank, tensors)
        for slot, stream in self.streams.states().items():
            ckpt.write_rng(tmp, slot, stream)
        self.acc.wait_for_everyone()
        path = root / ckpt.checkpoint_name(self.step_count)
        if self.is_main:
            state = {"bad_steps_total": self.bad_total, "bad_steps_in_a_row": self.bad_in_a_row, "world_size": self.world,
                     "sharded": self.sharded is not None, "layout": layout, "optim": record, "config": self._config_record()}
            path = ckpt.commit(tmp, root, self.step_count, state, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def _resume(self) -> None:
        found = ckpt.load_latest(self.checkpoint_dir, self.streams.slots)
        if found is None:
            ckpt.require_usable(self.checkpoint_dir)  # some exist, none loads: refuse rather than start over
            self.log_line(f"resume: no checkpoint under {self.checkpoint_dir} yet; starting from step 0")
            return
        saved_train = found.state.get("config", {}).get("train", {})
        ckpt.check_resumable({"train": saved_train}, {"train": dataclasses.asdict(self.cfg)}, found.path)
        for role, module in self._roles().items():
            saved_state.load_role(role, module, found.tensors, found.path)
        self._load_optim(found)
        self.step_count = found.step
        self.bad_total = int(found.state.get("bad_steps_total", 0))
        self.bad_in_a_row = int(found.state.get("bad_steps_in_a_row", 0))
        fresh = self.streams.restore(found.rng, found.step)
        note = batch_split_note(found.world_size, int(saved_train.get("grad_accum", self.cfg.grad_accum)), self.world, self.cfg.grad_accum)
        if note:
            self.log_line(f"resume: {note}")
        if fresh:
            self.log_line(f"resume: no random stream saved for slot(s) {fresh} on rank {self.rank}; reseeded")
        self.resumed_from = found.path
        if self.is_main:
            MetricsLog.truncate(self.out_dir, found.step)

    def _load_optim(self, found: ckpt.Checkpoint) -> None:
        record = found.state.get("optim", {})
        try:
            for role, (opt, sched, module) in self._optimizers().items():
                saved_state.load_optimizer(role, opt, module, record[role], found.tensors, found.path)
                sched.load_state_dict(record[f"sched_{role}"])
            if self.acc.scaler is not None and "scaler" in record:
                self.acc.scaler.load_state_dict(record["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot resume from {found.path}: the optimiser state does not fit this run ({err})") from None

    def unsharded_generator(self) -> nn.Module | None:
        """The sampling generator, whole, on the main process (None on the others). Collective
        under FSDP2: its networks are gathered into a plain copy."""
        if self.sharded is not None:
            return self.sharded.unsharded_copy(self.a.generator, self.is_main)
        return self.sampling_generator if self.is_main else None

    def export(self) -> Path | None:
        """The sampling generator as ``OUT/export/generator.safetensors`` (main process; collective
        under FSDP2, whose shards are gathered)."""
        if self.out_dir is None:
            return None
        if self.sharded is not None:
            weights = full_state_dict(self.a.generator, self.is_main)
        else:
            weights = self.sampling_generator.state_dict()
        if not self.is_main:
            return None
        info = {"step": self.step_count, "ema": self.ema is not None, "world_size": self.world, "config": self._config_record()}
        return ckpt.export_generator(self.out_dir, weights, info)

    def _agreement(self) -> str:
        """How the processes hold the generator at the end: what each holds (sharded), or that
        all hold the same one (data parallelism)."""
        if self.sharded is not None:
            return self.sharded.report({role: opt for role, (opt, _, _) in self._optimizers().items()})
        same, digest = same_on_all_ranks(self.acc, self.a.generator)
        agree = f"generator identical on all {self.world} processes" if same else f"WARNING: generator differs across the {self.world} processes"
        return agree + f" (sha256 {digest[:16]})"

    # --- the run -----------------------------------------------------------------------------

    def run(self, on_log: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        """Train to ``cfg.steps``, checkpointing on the way and at the end, then export."""
        start_note = f" (resumed from {self.resumed_from.name})" if self.resumed_from else ""
        self.log_line(f"start: step {self.step_count} of {self.cfg.steps}{start_note}; {describe(self.acc, self.sharded is not None)}; "
                      f"effective batch {self.cfg.batch_size * self.cfg.grad_accum * self.world}")
        log = MetricsLog(self.out_dir if self.is_main else None, self.cfg.trackers)
        evals = self._evaluations(log)
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
                    if evals is not None and evals.due(self.step_count) and self._evaluate(evals, log):
                        break
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
                if self.is_main and self.out_dir is not None:
                    plot_run_curves(self.out_dir)
            if self.bad_in_a_row and self.bad_in_a_row >= self.step_count - first_step:
                self._stop(f"all {self.bad_in_a_row} steps of the run had NaN or inf")
            if saved_at != self.step_count:
                self.save_checkpoint()
            self.export()
        self.log_line(f"done: step {self.step_count}, {self.bad_total} skipped steps; {self._agreement()}")
        return logs

    def _evaluations(self, log: MetricsLog) -> RunEvaluation | None:
        """The experiment's evaluations, with one before the first step (not under FSDP2, whose
        sharded generator runs only with every process)."""
        if self.evaluate is None or not self.cfg.eval_every:
            return None
        if self.sharded is not None:
            raise ConfigError("train.eval_every: evaluations during a sharded (FSDP2) run are not supported; evaluate the export with didr eval")
        evals = RunEvaluation(self.evaluate, self.cfg.eval_every, self.cfg.alarm, self.log_line)
        self._evaluate(evals, log)
        return evals

    def _evaluate(self, evals: RunEvaluation, log: MetricsLog) -> bool:
        """One evaluation on the main process; whether the run stops (an alarm under ``train.alarm: stop``,
        which also puts the best evaluation's generator back, on every process)."""
        stop = evals(self.step_count, self.sampling_generator, log) if self.is_main else False
        if not any_rank(self.acc, stop):
            return False
        best = evals.restore_best(self.sampling_generator) if self.is_main else None
        for module in (self.sampling_generator,) if self.world > 1 else ():
            for p in module.parameters():
                torch.distributed.broadcast(p.data, src=0)
        self.log_line(f"stopped by the alarm at step {self.step_count}; the export is the generator of step {best} (best held-out evaluation)")
        return True

    def _latest(self) -> Path | None:
        root = self.checkpoint_dir
        return root / ckpt.checkpoint_name(self.step_count) if root is not None else None
