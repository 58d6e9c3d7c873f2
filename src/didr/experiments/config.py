"""The run configuration: one typed dataclass per YAML section.

    experiment: toy        # which experiment builds the models (see didr.experiments.registry)
    method: {...}          # MethodConfig: the objective and its settings
    train: {...}           # TrainConfig: the alternating TA / generator loop
    toy: {...}             # ToyConfig: the toy experiment's data, reward and stages
    digits: {...}          # DigitsConfig: real digits / MNIST
    backbone: {...}        # BackboneConfig: a diffusers text-to-image pipeline

``didr train CONFIG.yaml --set train.steps=100`` loads it with overrides; unknown fields, wrong
types and out-of-range values are refused with the field's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from didr.config import require
from didr.experiments.digits.config import DigitsConfig
from didr.experiments.toy.config import ToyConfig
from didr.models.pipeline import BackboneConfig
from didr.objectives.config import MethodConfig
from didr.train.config import TrainConfig

#: the experiments ``didr train`` runs (each one's runner: :data:`didr.experiments.registry.EXPERIMENTS`)
EXPERIMENT_NAMES = ("toy", "digits", "text-to-image")


@dataclass
class RunConfig:
    experiment: str = "toy"
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)  # real digits / MNIST (didr bench digits|mnist)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # text-to-image experiments

    def validate(self, path: str = "") -> None:
        require(self.experiment in EXPERIMENT_NAMES, "experiment", f"unknown experiment {self.experiment!r}; choose one of {', '.join(EXPERIMENT_NAMES)}")
