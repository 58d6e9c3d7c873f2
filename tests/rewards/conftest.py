"""Session-wide tiny reward models saved to disk (built once, loaded by each test through the real loaders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


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
    """HPSv2's file name and ``{"state_dict": ...}`` layout from an open_clip-layout module, a tokenizer
    and the tiny architecture's config.json; returns (folder, reference module)."""
    from didr.testing.reward_models import OpenClipReference, save_clip_tokenizer, tiny_hps_config

    folder = tmp_path_factory.mktemp("hps")
    vocab = save_clip_tokenizer(folder)
    torch.manual_seed(0)
    reference = OpenClipReference(vocab).eval()
    torch.save({"epoch": 1, "state_dict": reference.state_dict()}, folder / "HPS_v2.1_compressed.pt")
    (folder / "config.json").write_text(json.dumps(tiny_hps_config(vocab)))
    return folder, reference


@pytest.fixture(scope="session")
def image_reward_folder(tmp_path_factory):
    """ImageReward.pt + med_config.json + vocab.txt; returns (folder, BLIP ViT reference)."""
    from didr.testing.reward_models import save_image_reward_folder

    return save_image_reward_folder(tmp_path_factory.mktemp("imagereward"))


@pytest.fixture(scope="session")
def aesthetic_folder(tmp_path_factory):
    """OpenAI-CLIP-like tiny model (quick GELU) plus a head file under the official name."""
    from didr.rewards.heads import MLPHead
    from didr.testing.reward_models import save_clip_folder

    folder = save_clip_folder(tmp_path_factory.mktemp("aesthetic"), seed=1, act="quick_gelu")
    torch.manual_seed(2)
    head = MLPHead(16)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    torch.save(head.state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    return folder
