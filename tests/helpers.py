"""Helpers for the training tests: a tiny in-process alignment problem and fast CLI runs of the toy."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from didr.diffusion.schedules import make_schedule
from didr.models.mlp import MLPDenoiser, MLPGenerator
from didr.objectives.config import MethodConfig, build_objective
from didr.rewards.toy import parse_toy_reward
from didr.train import Alignment, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs" / "toy.yaml")

#: the toy at a size that trains in seconds on one CPU thread
FAST_TOY = [
    "toy.ref_steps=40", "toy.ref_batch=128", "toy.distill_steps=20", "toy.distill_batch=128",
    "toy.hidden=32", "toy.teacher_steps=10", "toy.eval_samples=400", "train.batch_size=64",
    "train.ta_updates=2", "train.steps=20", "train.progress=false", "method.drp_steps=1",
]


def sets(*overrides: str) -> list[str]:
    """``--set`` arguments for FAST_TOY followed by ``overrides`` (later ones win)."""
    return [arg for o in (*FAST_TOY, *overrides) for arg in ("--set", o)]


def subprocess_env() -> dict:
    """One torch thread per process: on two shared cores, more threads only slow tiny ops down."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def didr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "didr", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "didr", *args]


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def exported(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "export" / "generator.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def tiny_alignment(seed: int = 0, reward=None, method: str = "didr", sample_inputs=None) -> Alignment:
    """A 1-D alignment problem small enough for dozens of steps per second."""
    torch.manual_seed(seed)
    schedule = make_schedule("vp-cosine")
    reference = MLPDenoiser(schedule, 1, 16, 2).requires_grad_(False)
    generator = MLPGenerator(1, 16, 2)
    ta = copy.deepcopy(reference).requires_grad_(True)
    objective = build_objective(MethodConfig(name=method, drp_steps=1), schedule, reward or parse_toy_reward("sigmoid:4"))
    return Alignment(generator, reference, ta, objective, sample_inputs or (lambda n: (torch.randn(n, 1), None)))


def tiny_config(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=16, ta_updates=1, lr_generator=1e-3, lr_ta=1e-3, log_every=2, progress=False)
    return TrainConfig(**{**base, **kw})


class HubCache:
    """A huggingface_hub cache that a test fills as downloads would have: ``models--org--name`` with
    ``refs/main`` naming a snapshot that holds the files. With ``HF_HUB_OFFLINE=1`` (the suite's),
    hub references resolve from it and from nowhere else."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def snapshot(self, repo: str) -> Path:
        folder = self.root / f"models--{repo.replace('/', '--')}"
        revision = hashlib.sha1(repo.encode()).hexdigest()
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
        return folder / "snapshots" / revision

    def add(self, repo: str, files: dict[str, bytes | str]) -> None:
        """Files (path in the repo -> content) into the repo's snapshot."""
        for name, content in files.items():
            target = self.snapshot(repo) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)

    def add_folder(self, repo: str, folder: Path) -> None:
        """A whole local folder (a saved pipeline, say) as the repo's snapshot."""
        shutil.copytree(folder, self.snapshot(repo), dirs_exist_ok=True)

    def env(self) -> dict:
        """A subprocess environment that reads this cache, offline."""
        return {**subprocess_env(), "HF_HUB_CACHE": str(self.root), "HF_HUB_OFFLINE": "1"}


def load_benchmark(name: str):
    """The script ``benchmarks/NAME.py`` as a module (registered, so that its dataclasses find it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
