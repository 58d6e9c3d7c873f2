"""Session-wide tiny reward models saved to disk (built once, loaded by each test through the real loaders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    from tiny_models import save_clip_folder

    return save_clip_folder(tmp_path_factory.mktemp("pickscore"))


@pytest.fixture(scope="session")
def photos():
    """Real photographs from scikit-image, (H, W, 3) uint8, of several sizes and aspect ratios."""
    data = pytest.importorskip("skimage.data")
    return {name: np.ascontiguousarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}

