"""Synthetic models for the tests, the benchmarks and the tiny presets: random weights built from
configs and saved in the real layouts, so that they load through the same ``from_pretrained``
paths as released weights. Nothing here is a trained model.

- :mod:`.tiny`: tiny text-to-image pipelines (SDXL, Z-Image) and a tiny CLIP, milliseconds on a CPU;
- :mod:`.true_shapes`: SDXL, Z-Image and CLIP ViT-H/14 at their published sizes (``configs/``);
- :mod:`.reward_models`: tiny reward models in the official file layouts (HPSv2, ImageReward,
  the aesthetic head) and the official modules' structure, for parity tests.
"""
