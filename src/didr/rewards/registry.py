"""Rewards by name: ``load_reward("pickscore:/models/PickScore_v1")``.

Spec syntax: ``NAME[:SOURCE][?KEY=VALUE&KEY=VALUE]``

==============  =============================================  =====================================
NAME            SOURCE (default)                               options
==============  =============================================  =====================================
pickscore       model folder or hub id (yuvalkirstain/         processor
                PickScore_v1)
hpsv2 (hps,     HPS_v2.1_compressed.pt, a folder holding it,   filename, config, tokenizer, scale
hpsv2.1)        or a hub repo (xswu/HPSv2)
imagereward     folder or hub repo with ImageReward.pt and     tokenizer
                med_config.json (THUDM/ImageReward)
aesthetic       sac+logos+ava1-l14-linearMSE.pth or a folder   clip
                holding it (required)
clipscore       CLIP model folder or hub id                    processor, scale
                (openai/clip-vit-large-patch14)
py              ``package.module:attribute``, a reward         keyword arguments of a class
                callable or a class to instantiate
toy             a toy reward on points: ``sigmoid:4``,
                ``linear:0.5``, ``step``
==============  =============================================  =====================================

Every loader also takes ``dtype``: float32 (the default, whatever the checkpoint stores, as the
official scorers load it), float16 or bfloat16. Examples::

    pickscore
    hpsv2:/models/HPS_v2.1_compressed.pt?tokenizer=/models/clip-h
    aesthetic:/models/aesthetic?clip=/models/clip-vit-large-patch14
    clipscore:openai/clip-vit-base-patch32?scale=2.5
    py:my_project.rewards:brightness
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from didr.errors import ConfigError
from didr.hub import check_folder_ref, resolve_weight_file
from didr.rewards.clip import AESTHETIC_HEAD_FILES, CLIP_L_HUB, PICKSCORE_HUB, load_aesthetic, load_clipscore, load_pickscore
from didr.rewards.hps import HPS_HUB, HPS_V21_FILE, load_hpsv2
from didr.rewards.image_reward import IMAGE_REWARD_HUB, load_image_reward
from didr.rewards.toy import parse_toy_reward
from didr.runtime import DTYPES


def _loaders() -> dict[str, Callable]:
    return {
        "pickscore": load_pickscore,
        "hpsv2": load_hpsv2,
        "imagereward": load_image_reward,
        "aesthetic": load_aesthetic,
        "clipscore": load_clipscore,
    }


ALIASES = {"hps": "hpsv2", "hpsv2.1": "hpsv2", "image_reward": "imagereward", "image-reward": "imagereward", "laion_aesthetic": "aesthetic"}
NAMES = ("pickscore", "hpsv2", "imagereward", "aesthetic", "clipscore", "py", "toy")


@dataclass(frozen=True)
class RewardSpec:
    """A parsed ``NAME[:SOURCE][?OPTIONS]`` string."""

    name: str
    source: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_reward_spec(spec: str) -> RewardSpec:
    """Split a spec string; the name is case-insensitive and may be an alias."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a reward spec must be a non-empty string, got {spec!r}")
    body, _, query = spec.strip().partition("?")
    name, _, source = body.partition(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name not in NAMES:
        raise ConfigError(f"unknown reward {name!r} in spec {spec!r}; choose one of {', '.join(NAMES)}")
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"reward spec {spec!r}: option {item!r} is not KEY=VALUE")
        options[key] = value
    return RewardSpec(name, source or None, options)


def load_reward(spec: Any, *, device: Any = None, dtype: torch.dtype | str | None = None) -> Callable:
    """A reward from a spec string (see the module docstring); a callable is returned unchanged."""
    if callable(spec) and not isinstance(spec, str):
        return spec
    parsed = parse_reward_spec(spec)
    if parsed.name == "toy":
        return parse_toy_reward(parsed.source or "")
    if parsed.name == "py":
        return _python_reward(parsed, spec)
    loader = _loaders()[parsed.name]
    kwargs = _coerce_options(loader, parsed.options, spec)
    kwargs.setdefault("dtype", _dtype(dtype, spec))
    args = (parsed.source,) if parsed.source else ()
    if parsed.name == "aesthetic" and not args:
        raise ConfigError(f"reward spec {spec!r}: the aesthetic predictor needs its head, aesthetic:PATH/TO/sac+logos+ava1-l14-linearMSE.pth")
    return loader(*args, device=device, **kwargs)


#: each public reward's weight reference without a source, and the file that shows it is there
REFERENCES = {"pickscore": (PICKSCORE_HUB, "config.json", False), "clipscore": (CLIP_L_HUB, "config.json", False),
              "hpsv2": (HPS_HUB, HPS_V21_FILE, True), "imagereward": (IMAGE_REWARD_HUB, "ImageReward.pt", True),
              "aesthetic": (None, AESTHETIC_HEAD_FILES[0], True)}


def check_reward_reference(spec: str) -> None:
    """The spec parses, and the reward's weights resolve (locally, from the hub cache, or from the
    hub when it is reachable), without loading the model."""
    parsed = parse_reward_spec(spec)
    if parsed.name not in REFERENCES:
        return
    default, marker, is_file = REFERENCES[parsed.name]
    source = parsed.source or default
    if source is None:
        raise ConfigError(f"reward spec {spec!r}: the aesthetic predictor needs its head, aesthetic:PATH/TO/{marker}")
    what = f"reward {parsed.name}"
    if is_file:
        resolve_weight_file(source, what, [parsed.options.get("filename", marker)])
    else:
        check_folder_ref(source, what, marker)


def _coerce_options(loader: Callable, options: dict[str, str], spec: str) -> dict[str, Any]:
    """Spec options as the loader's keyword arguments, typed like their defaults."""
    params = {n: p for n, p in inspect.signature(loader).parameters.items() if p.kind is p.KEYWORD_ONLY and n != "device"}
    out = {}
    for key, value in options.items():
        if key not in params:
            raise ConfigError(f"reward spec {spec!r}: unknown option {key!r}; allowed: {', '.join(sorted(params))}")
        default = params[key].default
        if key == "dtype":
            out[key] = _dtype(value, spec)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ConfigError(f"reward spec {spec!r}: option {key}={value!r} is not a number") from None
        else:
            out[key] = value
    return out


def _dtype(value: Any, spec: str) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ConfigError(f"reward spec {spec!r}: dtype {value!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[value]


def _python_reward(parsed: RewardSpec, spec: str) -> Callable:
    """``py:package.module:attribute``: a callable as is, a class instantiated with the options."""
    module_name, _, attr = (parsed.source or "").partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward spec {spec!r}: expected py:package.module:attribute")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"reward spec {spec!r}: cannot import {module_name}:{attr} ({err})") from None
    if inspect.isclass(obj):
        obj = obj(**parsed.options)
    elif parsed.options:
        raise ConfigError(f"reward spec {spec!r}: options are only accepted for a class, and {attr} is not one")
    if not callable(obj):
        raise ConfigError(f"reward spec {spec!r}: {module_name}:{attr} is not callable")
    return obj
