"""Calibration on digits: the beta' a DIDR run's mean reward implies, against the beta it was given.

DIDR's target is the reference's own distribution tilted, p_ref exp(r / beta) (M6), so beta' is
solved on the reference's samples: the 30-step teacher's evaluation samples, tilted within each
digit as the empirical optimum tilts the held-out images (:func:`didr.eval.image_metrics.matched_temperature`).
A calibrated run has beta' = beta, and its mean reward is the tilted teacher's at beta. The
held-out images give a second beta' (the row's ``opt_beta``, that of FID p*), which also carries
the difference between the teacher and the data.
"""

from __future__ import annotations

import math

from torch import Tensor

from didr.eval import image_metrics as im
from didr.eval.calibration import Calibrated, beta_of


def tilted_mean(rewards: Tensor, labels: Tensor, beta: float) -> float:
    """The mean reward of the set tilted within each class at ``beta`` (the untilted mean at inf)."""
    return float((im.tilted_weights(rewards, labels, beta) * rewards.double()).sum())


def is_didr(family: str) -> bool:
    return family == "DIDR" or family.startswith("DIDR ")


class Calibration:
    """Temperatures implied by mean rewards, on the teacher's samples and on the held-out images."""

    def __init__(self, teacher_rewards: Tensor, teacher_labels: Tensor, data_rewards: Tensor, data_labels: Tensor):
        self.teacher = (teacher_rewards, teacher_labels)
        self.data = (data_rewards, data_labels)

    def add(self, rows: list[dict]) -> None:
        """``beta_teacher``: the teacher-tilt temperature with each DIDR run's mean reward."""
        for row in rows:
            if is_didr(row["family"]):
                row["beta_teacher"] = im.matched_temperature(*self.teacher, row["reward"])

    def targets(self, betas: list[float]) -> dict[str, dict[str, float]]:
        """The tilted teacher's and the tilted data's mean reward at each beta."""
        return {name: {f"{b:g}": tilted_mean(*sets, b) for b in betas} for name, sets in (("teacher", self.teacher), ("data", self.data))}


def given_betas(rows: list[dict]) -> list[float]:
    return sorted({beta_of(r["setting"]) for r in rows if is_didr(r["family"]) and r["setting"]})


def calibrated(result: dict) -> list[Calibrated]:
    """Per DIDR setting of a benchmark's rows: beta, each seed's teacher-tilt beta', the mean
    rewards, the tilted teacher's mean reward at beta (the target) and the tilted data's."""
    targets = result.get("calibration_targets") or {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in result["rows"]:
        if is_didr(r["family"]) and "beta_teacher" in r:
            groups.setdefault((r["family"], r["setting"]), []).append(r)
    out = []
    for (family, setting), rs in groups.items():
        beta = beta_of(setting)
        key = f"{beta:g}"
        out.append(Calibrated(family, setting, beta, [r["beta_teacher"] for r in rs], [r["reward"] for r in rs],
                              targets.get("teacher", {}).get(key, math.nan), {"the data's at beta": targets.get("data", {}).get(key, math.nan)}))
    return out
