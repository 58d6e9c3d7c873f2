"""The run configuration: one typed dataclass per YAML section.

    experiment: toy        # which experiment builds the models (see didr.experiments.registry)
    method: {...}          # MethodConfig: the objective and its settings
    train: {...}           # TrainConfig: the alternating TA / generator loop
    toy: {...}             # ToyConfig: the toy experiment's data, reward and stages

``didr train CONFIG.yaml --set train.steps=100`` loads it with overrides; unknown fields, wrong
types and out-of-range values are refused with the field's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from didr.config import require
from didr.experiments.digits import DigitsConfig
from didr.experiments.text_to_image import BackboneConfig
from didr.experiments.toy import ToyConfig
from didr.objectives.config import MethodConfig
from didr.train.config import TrainConfig


@dataclass
class RunConfig:
    experiment: str = "toy"
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)  # real digits / MNIST (didr bench digits|mnist)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # text-to-image experiments

    def validate(self, path: str = "") -> None:
        from didr.experiments.registry import EXPERIMENTS

        require(self.experiment in EXPERIMENTS, "experiment", f"unknown experiment {self.experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
