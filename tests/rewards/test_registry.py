"""Reward specs: parsing, loading every public model through ``load_reward``, and the errors users see."""

from __future__ import annotations

import pytest
import torch

from didr.errors import ConfigError, ModelLoadError, RewardError
from didr.rewards import (
    AestheticReward,
    CLIPScoreReward,
    HPSv2Reward,
    ImageReward,
    PickScoreReward,
    RewardSpec,
    SigmoidReward,
    call_reward,
    load_reward,
    parse_reward_spec,
    reward_info,
)

PROMPTS = ["a cat", "a dog"]


def brightness(images, prompts=None):
    """A plain callable reward, loaded through ``py:``."""
    return images.flatten(1).mean(1)


def test_parse_spec():
    assert parse_reward_spec("PickScore") == RewardSpec("pickscore")
    assert parse_reward_spec("hps:/m/HPS_v2.1_compressed.pt?tokenizer=/m/tok&scale=1") == RewardSpec(
        "hpsv2", "/m/HPS_v2.1_compressed.pt", {"tokenizer": "/m/tok", "scale": "1"}
    )
    assert parse_reward_spec("py:pkg.mod:fn") == RewardSpec("py", "pkg.mod:fn")
    assert parse_reward_spec("toy:sigmoid:4").source == "sigmoid:4"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("pickscor", "unknown reward 'pickscor'.*pickscore"),
        ("hpsv2:/x?scale", "'scale' is not KEY=VALUE"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_reward_spec(spec)


def test_every_public_model_loads_from_a_spec(clip_folder, hps_folder, image_reward_folder, aesthetic_folder):
    specs = {
        f"pickscore:{clip_folder}": PickScoreReward,
        f"hpsv2.1:{hps_folder[0]}": HPSv2Reward,
        f"imagereward:{image_reward_folder[0]}": ImageReward,
        f"aesthetic:{aesthetic_folder}": AestheticReward,
        f"clipscore:{clip_folder}?scale=2.5": CLIPScoreReward,
    }
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    for spec, cls in specs.items():
        reward = load_reward(spec)
        assert isinstance(reward, cls), spec
        with torch.no_grad():
            out = call_reward(reward, images, PROMPTS)
        assert out.shape == (2,), spec
        info = reward_info(reward)
        assert info.differentiable and info.higher_is_better and info.typical_range is not None
    assert load_reward(f"clipscore:{clip_folder}?scale=2.5").scale == 2.5


def test_dtype_option(clip_folder):
    reward = load_reward(f"pickscore:{clip_folder}?dtype=bfloat16")
    assert reward.model.dtype == torch.bfloat16
    with torch.no_grad():
        assert call_reward(reward, torch.zeros(1, 3, 32, 32), "a cat").dtype == torch.float32


def test_python_and_toy_rewards():
    assert load_reward("py:tests.rewards.test_registry:brightness") is brightness
    assert isinstance(load_reward("py:didr.rewards.toy:SigmoidReward"), SigmoidReward)
    assert isinstance(load_reward("toy:sigmoid:4"), SigmoidReward)
    assert load_reward(brightness) is brightness


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("pickscore:{clip}?colour=red", ConfigError, "unknown option 'colour'; allowed: dtype, processor"),
        ("clipscore:{clip}?scale=big", ConfigError, "scale='big' is not a number"),
        ("pickscore:{clip}?dtype=float8", ConfigError, "dtype 'float8'"),
        ("aesthetic", ConfigError, r"sac\+logos\+ava1-l14-linearMSE\.pth"),
        ("py:didr.rewards.toy:nothing", ConfigError, "cannot import didr.rewards.toy:nothing"),
        ("imagereward:{missing}", ModelLoadError, r"does not exist.*ImageReward\.pt"),
    ],
)
def test_load_errors_are_named(spec, error, message, clip_folder, tmp_path):
    with pytest.raises(error, match=message):
        load_reward(spec.format(clip=clip_folder, missing=tmp_path / "missing"))


def test_wrong_shape_nan_and_inf_are_caught_with_the_reward_name():
    images = torch.zeros(3, 2)
    bad = {
        "flat": lambda x, p=None: x.sum(),
        "nan": lambda x, p=None: torch.tensor([0.0, float("nan"), 1.0]),
        "inf": lambda x, p=None: torch.tensor([0.0, float("inf"), 1.0]),
        "list": lambda x, p=None: [0.0, 1.0, 2.0],
    }
    for name, fn in bad.items():
        fn.__name__ = f"my_{name}_reward"
        with pytest.raises(RewardError, match=f"my_{name}_reward"):
            call_reward(fn, images)
