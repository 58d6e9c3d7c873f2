"""Experiments that ``didr train`` can run: name -> function(config, out_dir) -> metrics dict."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from didr.experiments.config import RunConfig


def _toy(cfg: RunConfig, out_dir: Path) -> dict:
    from didr.experiments.toy_run import train_toy

    return train_toy(cfg, out_dir)


def _text_to_image(cfg: RunConfig, out_dir: Path) -> dict:
    from didr.experiments.text_to_image import run_text_to_image

    return run_text_to_image(cfg, out_dir)


def _digits(cfg: RunConfig, out_dir: Path) -> dict:
    from didr.experiments.digits import run_digits

    return run_digits(cfg, out_dir)


EXPERIMENTS: dict[str, Callable[[RunConfig, Path], dict]] = {
    "toy": _toy,
    "digits": _digits,
    "text-to-image": _text_to_image,
}
