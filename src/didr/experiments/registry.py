"""The experiments that ``didr train`` runs: name -> function(config, out_dir) -> metrics dict."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from didr.experiments.config import RunConfig
from didr.experiments.digits.run import run_digits
from didr.experiments.text_to_image import run_text_to_image
from didr.experiments.toy.run import train_toy

EXPERIMENTS: dict[str, Callable[[RunConfig, Path], dict]] = {
    "toy": train_toy,
    "digits": run_digits,
    "text-to-image": run_text_to_image,
}
