"""The typed config loader: unknown fields, wrong types and ranges are refused by name."""

import pytest

from didr import config as cfgio
from didr.errors import ConfigError
from didr.experiments.config import RunConfig


def test_defaults_and_yaml_roundtrip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: dipp\n  alpha: 2\ntrain:\n  steps: 7\n")
    cfg = cfgio.load(RunConfig, path)
    assert cfg.method.name == "dipp" and cfg.method.alpha == 2.0 and isinstance(cfg.method.alpha, float)
    assert cfg.train.steps == 7 and cfg.train.batch_size == RunConfig().train.batch_size


def test_overrides_parse_yaml_values(tmp_path):
    cfg = cfgio.load(RunConfig, None, ["train.steps=12", "toy.means=[-1, 1]", "method.t_max=0.3", "method.t_min=null"])
    assert cfg.train.steps == 12 and cfg.toy.means == [-1.0, 1.0] and cfg.method.t_max == 0.3 and cfg.method.t_min is None


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.stepz=3"], "'train.stepz'"),
        (["nonsense=1"], "'nonsense'"),
        (["train.steps=abc"], "train.steps: expected an integer"),
        (["train.steps=0"], "train.steps: must be >= 1"),
        (["method.beta=0"], "method.beta: must be > 0"),
        (["method.name=foo"], "unknown method 'foo'"),
        (["method.drs=magic"], "unknown DRS estimator"),
        (["toy.weights=[0.3, 0.3]"], "sum to 1"),
        (["toy.stds=[0.5, -1]"], "stds must be > 0"),
        (["toy.reward=banana"], "unknown reward 'banana'"),
        (["train.progress=3"], "expected true or false"),
        (["experiment=nope"], "unknown experiment 'nope'"),
        (["backbone.generator_renoise=noisy"], "backbone.generator_renoise: must be one of ddim, fresh"),
        (["experiment=digits", "digits.ink_weight=-1"], "digits.ink_weight: must be >= 0"),
        (["train.alarm=loud"], "train.alarm: must be one of off, warn, stop"),
    ],
)
def test_bad_fields_are_named(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        cfgio.load(RunConfig, None, overrides)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfgio.load(RunConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfgio.load(RunConfig, bad)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "is empty"),
        ("# nothing but a comment\n", "is empty"),
        ("null\n", "is empty"),
        ("{}\n", "is empty"),
        ("[]\n", "got a list"),
        ("- train\n- method\n", "got a list"),
        ("3\n", "got an int"),
        ("false\n", "got a bool"),
        ("toy\n", "got a str"),
    ],
    ids=["empty", "comment only", "null", "empty mapping", "empty list", "list", "number", "false", "string"],
)
def test_empty_and_non_mapping_files_are_refused(tmp_path, text, fragment):
    """An empty file would otherwise run the default experiment; a list or scalar is no config."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        cfgio.load(RunConfig, path)
    assert fragment in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_shipped_toy_config_loads():
    from pathlib import Path

    cfg = cfgio.load(RunConfig, Path(__file__).parents[1] / "configs" / "toy.yaml")
    assert cfg.experiment == "toy" and cfg.method.name == "didr"
