"""A catalogue of bad inputs: each gets one clear line on stderr (exit status 2, or a warning where
the run can go on), and none touches an existing run's checkpoints or config."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from didr.cli import main
from didr.errors import ConfigError, RewardError
from didr.eval.score import read_prompts
from didr.train.loop import Trainer, TrainingError
from tests.helpers import TOY, sets, tiny_alignment, tiny_config


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of every file under the run's checkpoints, and of its config."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and ("checkpoints" in p.parts or p.name == "config.yaml")]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished little run with three checkpoints."""
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", TOY, "--out", str(out), *sets("train.steps=6", "train.checkpoint_every=2")]) == 0
    assert len(list((out / "checkpoints").iterdir())) == 3
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


# (label, extra argv after "train CONFIG --out OUT" with sets(), config builder or None, expected message)
CONFIG_CASES = [
    ("unknown field", ["--set", "train.stepz=5"], None, r"unknown config field 'train.stepz'; TrainConfig has: steps, "),
    ("unknown section", [], "trian: {steps: 3}\n", r"unknown config field 'trian'"),
    ("string for an integer", ["--set", "train.steps=abc"], None, r"train.steps: expected an integer, got 'abc'"),
    ("float for an integer", ["--set", "train.batch_size=1.5"], None, r"train.batch_size: expected an integer, got 1.5"),
    ("not a boolean", ["--set", "train.progress=maybe"], None, r"train.progress: expected true or false"),
    ("zero steps", ["--set", "train.steps=0"], None, r"train.steps: must be >= 1, got 0"),
    ("negative learning rate", ["--set", "train.lr_generator=-1"], None, r"train.lr_generator: must be > 0, got -1"),
    ("unknown precision", ["--set", "train.mixed_precision=fp8"], None, r"train.mixed_precision: must be one of no, bf16, fp16, got 'fp8'"),
    ("unknown LR schedule", ["--set", "train.lr_schedule=linear"], None, r"train.lr_schedule: must be one of constant, cosine"),
    ("keep no checkpoints", ["--set", "train.keep_checkpoints=0"], None, r"train.keep_checkpoints: must be >= 1"),
    ("max_bad_steps zero", ["--set", "train.max_bad_steps=0"], None, r"train.max_bad_steps: must be >= 1"),
    ("grad_accum zero", ["--set", "train.grad_accum=0"], None, r"train.grad_accum: must be >= 1"),
    ("negative checkpoint interval", ["--set", "train.checkpoint_every=-1"], None, r"train.checkpoint_every: must be >= 0"),
    ("ema_decay of 1", ["--set", "train.ema_decay=1.0"], None, r"train.ema_decay: must be in \[0, 1\)"),
    ("unknown method", ["--set", "method.name=ppo"], None, r"method.name: unknown method 'ppo'; choose one of di, dipp, didr"),
    ("unknown experiment", ["--set", "experiment=nope"], None, r"experiment: unknown experiment 'nope'; choose one of toy"),
    ("section given a value", ["--set", "train=3"], None, r"train: expected a mapping of TrainConfig fields"),
    ("override without '='", ["--set", "train.steps"], None, r"override 'train.steps' must look like section.field=value"),
    ("invalid YAML", [], "train: [steps: 1\n", r"not valid YAML"),
    ("YAML that is not a mapping", [], "- 1\n- 2\n", r"expected a mapping at the top level"),
    ("empty file", [], "", r"bad.yaml is empty"),
    ("comments only", [], "# to do\n", r"bad.yaml is empty"),
    ("empty list", [], "[]\n", r"expected a mapping at the top level .*got a list"),
    ("a scalar", [], "0\n", r"expected a mapping at the top level .*got an int"),
]


@pytest.mark.parametrize("label, argv, text, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors(trained, tmp_path, capsys, label, argv, text, message):
    config = _yaml(tmp_path, text) if text is not None else TOY
    before = snapshot(trained)
    for out in (trained, tmp_path / "fresh"):  # an existing run is untouched; a new one is never created
        assert main(["train", config, "--out", str(out), *sets(), *argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("didr train: error: "), err
        assert re.search(message, err), err
    assert snapshot(trained) == before
    assert not (tmp_path / "fresh").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["train", TOY, "--out", str(tmp_path / "f"), *sets()]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err and (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize(
    "change, message",
    [
        ("method.name=dipp", r"method.name changed \('didr' -> 'dipp'\)"),
        ("toy.hidden=64", r"toy.hidden changed \(32 -> 64\)"),
        ("train.lr_generator=0.01", r"train.lr_generator changed"),
        ("train.seed=1", r"train.seed changed"),
    ],
    ids=["another method", "another backbone", "another learning rate", "another seed"],
)
def test_incompatible_resume_is_refused(trained, capsys, change, message):
    before = snapshot(trained)
    assert main(["train", TOY, "--out", str(trained), *sets("train.steps=6", "train.checkpoint_every=2", change), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and re.search(message, err) and "only train." in err
    assert snapshot(trained) == before


def test_every_checkpoint_damaged_is_refused(run_copy, capsys):
    for ck in (run_copy / "checkpoints").iterdir():
        (ck / "tensors-rank00000.safetensors").write_bytes(b"\0" * 10)
    before = snapshot(run_copy)
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        assert main(["train", TOY, "--out", str(run_copy), *sets("train.steps=6", "train.checkpoint_every=2"), "--resume"]) == 2
    assert "none of the 3 checkpoint(s)" in capsys.readouterr().err
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "no state.json"])
def test_damaged_latest_checkpoint_is_skipped(run_copy, damage):
    latest = run_copy / "checkpoints" / "step-00000006"
    f = latest / "tensors-rank00000.safetensors"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "corrupt":
        f.write_bytes(f.read_bytes()[:-8] + b"\xff" * 8)
    else:
        (latest / "state.json").unlink()
    earlier = snapshot(run_copy)
    with pytest.warns(UserWarning, match="skipping checkpoint: .*step-00000006"):
        assert main(["train", TOY, "--out", str(run_copy), *sets("train.steps=6", "train.checkpoint_every=2"), "--resume"]) == 0
    assert "resumed from step-00000004" in (run_copy / "train.log").read_text()
    after = snapshot(run_copy)
    assert all(after[k] == v for k, v in earlier.items() if "step-00000004" in k or "step-00000002" in k)


def test_reward_with_wrong_shape_stops_with_its_name(tmp_path):
    class Wide:
        name = "wide"

        def __call__(self, x, prompts=None):
            return torch.sigmoid(x).repeat(1, 2)

    trainer = Trainer(tiny_alignment(reward=Wide(), method="dipp"), tiny_config(steps=3, checkpoint_every=1), tmp_path)
    with pytest.raises(RewardError, match=r"reward 'wide' returned shape \(16, 2\), expected \(16,\)"):
        trainer.run()
    assert not (tmp_path / "checkpoints").exists()


def test_reward_always_nan_stops_the_run(tmp_path):
    nan = lambda x, prompts=None: x[:, 0] * float("nan")  # noqa: E731
    trainer = Trainer(tiny_alignment(reward=nan, method="dipp"), tiny_config(steps=9, max_bad_steps=2), tmp_path)
    with pytest.raises(TrainingError, match=r"2 steps in a row had NaN or inf"):
        trainer.run()


@pytest.mark.parametrize("content, message", [("", "is empty"), (None, "does not exist")], ids=["empty", "missing"])
def test_prompt_file(tmp_path, content, message):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_prompts([tmp_path / "a.png"], path)
