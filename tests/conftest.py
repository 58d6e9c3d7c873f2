"""Suite-wide settings: one torch thread (the suite's tensors are small; several threads on a
shared 2-core machine slow small ops many times over) and no network access to model hubs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
