"""Suite-wide settings: one torch thread (the suite's tensors are small; several threads on a
shared 2-core machine slow small ops many times over) and no network access to model hubs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache that hub references resolve from, offline (fill it with ``.add``)."""
    from huggingface_hub import constants

    from tests.helpers import HubCache

    cache = HubCache(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache.root))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache.root))
    return cache
