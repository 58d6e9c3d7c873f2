"""Session-wide tiny reward models saved to disk (built once, loaded by each test through the real loaders)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    from didr.testing.reward_models import save_clip_folder

    return save_clip_folder(tmp_path_factory.mktemp("pickscore"))


@pytest.fixture(scope="session")
def photos():
    """Real photographs from scikit-image, (H, W, 3) uint8, of several sizes and aspect ratios."""
    data = pytest.importorskip("skimage.data")
    return {name: np.ascontiguousarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}



@pytest.fixture(scope="session")
def hps_folder(tmp_path_factory):
    """HPSv2's layout; returns (folder, reference module)."""
    from didr.testing.reward_models import save_hps_folder

    return save_hps_folder(tmp_path_factory.mktemp("hps"))


@pytest.fixture(scope="session")
def image_reward_folder(tmp_path_factory):
    """ImageReward.pt + med_config.json + vocab.txt; returns (folder, BLIP ViT reference)."""
    from didr.testing.reward_models import save_image_reward_folder

    return save_image_reward_folder(tmp_path_factory.mktemp("imagereward"))


@pytest.fixture(scope="session")
def aesthetic_folder(tmp_path_factory):
    """OpenAI-CLIP-like tiny model (quick GELU) plus a head file under the official name."""
    from didr.testing.reward_models import save_aesthetic_folder

    return save_aesthetic_folder(tmp_path_factory.mktemp("aesthetic"))
