"""``didr train`` as a process: killed with -9 or stopped by SIGTERM at a random moment after the
first checkpoint, then ``--resume``d, it exports exactly the generator of an uninterrupted run."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from didr.cli import main
from tests.helpers import ROOT, TOY, assert_bit_identical, didr_cmd, exported, sets, subprocess_env

LONG = ("train.steps=80", "train.checkpoint_every=10", "train.log_every=10")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "whole"
    assert main(["train", TOY, "--out", str(out), *sets(*LONG)]) == 0
    return out


def interrupt(out: Path, signum: int, stages_from: Path) -> tuple[int, str]:
    """Start a run and send ``signum`` at a random moment while it trains: after a randomly chosen
    checkpoint (step 10 to 60 of 80) appears, plus a random fraction of a step or two."""
    shutil.copytree(stages_from / "stages", out / "stages")  # the cached stages, as a rerun would find them
    proc = subprocess.Popen(
        didr_cmd("train", TOY, "--out", str(out), *sets(*LONG)), cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True
    )
    rng = random.Random()  # its own generator: the in-process runs seed the global one
    target = rng.choice(range(10, 61, 10))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not _reached(out, target):
        time.sleep(0.005)
    delay = rng.uniform(0.0, 0.03)
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    print(f"signal {signum} after checkpoint {target} + {delay:.3f} s; exit {proc.returncode}")
    return proc.returncode, err


def _reached(out: Path, step: int) -> bool:
    return any(int(p.name.split("-")[1]) >= step for p in (out / "checkpoints").glob("step-*") if p.name.split("-")[1].isdigit())


def resume_and_compare(out: Path, uninterrupted: Path) -> None:
    assert main(["train", TOY, "--out", str(out), *sets(*LONG), "--resume"]) == 0
    assert "(resumed from step-" in (out / "train.log").read_text()
    assert_bit_identical(exported(uninterrupted), exported(out))


def test_kill_9_then_resume_is_bit_identical(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    code, _ = interrupt(out, signal.SIGKILL, uninterrupted)
    assert code == -signal.SIGKILL, "the run finished before the kill; make it longer"
    assert not (out / "export").exists()
    resume_and_compare(out, uninterrupted)


def test_sigterm_saves_then_resume_is_bit_identical(uninterrupted, tmp_path):
    out = tmp_path / "stopped"
    code, err = interrupt(out, signal.SIGTERM, uninterrupted)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    line = next(x for x in err.splitlines() if x.startswith("didr train: stopped by SIGTERM at step "))
    step = int(line.split("at step ")[1].split(";")[0])
    assert (out / "checkpoints" / f"step-{step:08d}" / "state.json").is_file() and "Traceback" not in err
    resume_and_compare(out, uninterrupted)


def test_compatible_change_is_accepted(uninterrupted, tmp_path):
    out = tmp_path / "longer"
    shutil.copytree(uninterrupted, out)
    assert main(["train", TOY, "--out", str(out), *sets(*LONG, "train.steps=84", "train.log_every=2"), "--resume"]) == 0
    log = (out / "train.log").read_text()
    assert "start: step 80 of 84 (resumed from step-00000080)" in log and "done: step 84" in log
    assert (out / "checkpoints" / "step-00000084").is_dir()


def test_python_m_didr_is_the_cli():
    proc = subprocess.run(didr_cmd("train", "--help"), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "torchrun" in proc.stdout
