"""Sweeps: each method over its own strength, every setting at several seeds (docs/method.md §7).

One description serves every experiment: a :class:`Setting` is a method family (one frontier) at
one strength, with optional overrides of the train section; a run is a setting at one seed. The
default strengths of every experiment are one table, :data:`STRENGTH_GRIDS`. :class:`RunPool` runs
the runs in spawned worker processes of one torch thread each (or in this process), and each
experiment caches a finished run under ``OUT/runs/`` (:mod:`didr.experiments.stages`), so that a
rerun, or a sweep that was stopped, resumes where it was.
"""

from __future__ import annotations

from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ConfigError
from didr.objectives.config import MethodConfig, endpoint_alpha
from didr.runtime import process_pool

#: the field that sets each method's reward strength (methods without one give a single point)
STRENGTH_FIELD = {"didr": "beta", "dipp": "alpha", "dmdr": "alpha", "refl": "refl_reg"}

#: the default strengths swept, per experiment and preset. No pair of them is "matched" by assumption.
#: The toy's DIDR grid is the configured beta times ``beta_factors``; its DI++ grid is, for each of
#: those betas, the endpoint weight with the same average push (M13). The digits' grids are chosen so
#: that the methods' rewards overlap DIDR's: dmdr's normalised distribution-matching term drowns
#: alpha <= 4, so its grid starts at 8; ReFL's regulariser runs from barely off the initial
#: generator (300) to reward hacking (30).
STRENGTH_GRIDS: dict[str, dict[str, Any]] = {
    "toy": {"beta_factors": [0.5, 1.0, 2.0, 4.0], "refl": [0.1, 0.3, 1.0, 3.0], "dmdr": [0.03, 0.1, 0.3, 1.0]},
    "digits": {"didr": [1.0, 0.5, 0.25], "dipp": [1.0, 2.0, 4.0], "dmdr": [8.0, 16.0, 32.0], "refl": [30.0, 60.0, 100.0, 150.0, 300.0]},
    "digits-fast": {"didr": [1.0, 0.5], "dipp": [1.0, 2.0], "dmdr": [8.0], "refl": [100.0]},
}


@dataclass(frozen=True, eq=False)  # hashed by identity: a key of the sweep's tables
class Setting:
    """One point of a frontier: ``family`` (the frontier: ``didr``, ``didr:drs=exact``, ``DIDR MC``)
    at one strength, shown as ``setting`` (``beta=0.36``, ``b=0.5``; empty for a method without one)."""

    family: str
    setting: str
    method: MethodConfig
    train: dict = field(default_factory=dict)  # overrides of the train section
    target_cfg: float | None = None  # another guidance scale of the alignment target (an ablation)
    note: str = ""  # what an ablation variant tests
    budget: float = 1.0  # generator updates as a multiple of the configured ones
    cost: float = 1.0  # training time relative to the cheapest run: workers start the longest first

    @property
    def label(self) -> str:
        return f"{self.family} {self.setting}".strip()

    @property
    def strength(self) -> float | None:
        name = STRENGTH_FIELD.get(self.method.name)
        return None if name is None else getattr(self.method, name)


def toy_strengths(method: MethodConfig, schedule: NoiseSchedule) -> list[float]:
    """The toy's default grid of ``method``'s strength (see :data:`STRENGTH_GRIDS`)."""
    grids = STRENGTH_GRIDS["toy"]
    betas = [method.beta * f for f in grids["beta_factors"]]
    if method.name == "didr":
        return betas
    if method.name == "dipp":
        return [round(endpoint_alpha(replace(method, beta=b, alpha=None), schedule), 4) for b in betas]
    return list(grids.get(method.name, []))


def at_strength(method: MethodConfig, value: float, where: str) -> MethodConfig:
    """``method`` at strength ``value`` of its own strength field (refused if out of range)."""
    name = STRENGTH_FIELD[method.name]
    if (name == "beta" and not value > 0) or value < 0:
        raise ConfigError(f"{where}: {name} must be {'> 0' if name == 'beta' else '>= 0'}, got {value:g}")
    return replace(method, **{name: float(value)})


class _Here:
    """A finished-on-demand future: the task runs in this process when its result is asked for."""

    def __init__(self, fn: Callable, task: tuple):
        self.fn, self.task, self.done, self.value = fn, task, False, None

    def result(self) -> Any:
        if not self.done:
            self.value, self.done = self.fn(*self.task), True
        return self.value


class RunPool:
    """Runs tasks in ``jobs`` spawned processes (``initializer(*initargs)`` in each), or, with one
    job, in this process when their results are asked for. Use as a context manager: leaving it
    cancels what has not started."""

    def __init__(self, jobs: int, initializer: Callable | None = None, initargs: tuple = ()):
        self.executor = process_pool(jobs, initializer, initargs) if jobs > 1 else None

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def submit(self, fn: Callable, tasks: list[tuple], cost: Callable[[tuple], float] | None = None) -> list:
        """A future per task, in the tasks' order; the costliest start first, so that no long run
        is left for one worker at the end."""
        if self.executor is None:
            return [_Here(fn, task) for task in tasks]
        order = sorted(range(len(tasks)), key=lambda i: -cost(tasks[i])) if cost else range(len(tasks))
        futures: dict[int, Future] = {i: self.executor.submit(fn, *tasks[i]) for i in order}
        return [futures[i] for i in range(len(tasks))]

    def map(self, fn: Callable, tasks: list[tuple], describe: Callable[[tuple, Any], str], log: Callable[[str], None]) -> list:
        """Every task's result, in the tasks' order, each logged as it finishes."""
        futures = self.submit(fn, tasks)
        position = {id(f): i for i, f in enumerate(futures)}
        finished = futures if self.executor is None else as_completed(futures)
        results: list = [None] * len(tasks)
        for done, fut in enumerate(finished, 1):
            i = position[id(fut)]
            results[i] = fut.result()
            log(f"[{done}/{len(tasks)}] {describe(tasks[i], results[i])}")
        return results
