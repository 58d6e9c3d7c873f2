"""The torch preprocessing against the official PIL paths, on real photographs.

Tolerance: the official paths round to uint8 after each of PIL's two resampling passes; the
torch path does not round. Measured on these photographs the difference is at most 1.1 grey
levels (mean 0.3), so the tests allow 1.5 grey levels anywhere and 0.5 on average, expressed in
normalised units (divided by the smallest CLIP std, 0.2613).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import torchvision_reference, to_model_range, transformers_reference

from didr.rewards.preprocess import (
    OPENAI_CLIP_STD,
    ImagePreprocess,
    center_crop,
    from_unit_range,
    preprocess_from_config,
    to_unit_range,
    torchvision_clip_preprocess,
)

GREY = 1 / 255 / min(OPENAI_CLIP_STD)  # one grey level in normalised units
MAX_TOL, MEAN_TOL = 1.5 * GREY, 0.5 * GREY


def shrunk(array: np.ndarray, factor: int = 10) -> np.ndarray:
    """A small version of a photograph, so that preprocessing upscales it."""
    pil = Image.fromarray(array)
    return np.asarray(pil.resize((pil.width // factor, pil.height // factor), Image.BOX))


def assert_close(got: torch.Tensor, ref: torch.Tensor, label: str) -> None:
    assert got.shape == ref.shape, label
    diff = (got - ref).abs()
    assert diff.max() <= MAX_TOL, f"{label}: max diff {diff.max() / GREY:.2f} grey levels"
    assert diff.mean() <= MEAN_TOL, f"{label}: mean diff {diff.mean() / GREY:.2f} grey levels"


@pytest.mark.parametrize("upscale", [False, True], ids=["downscale", "upscale"])
def test_matches_transformers_clip_processor(photos, upscale):
    ours = ImagePreprocess()
    for name, array in photos.items():
        array = shrunk(array) if upscale else array
        assert_close(ours(to_model_range(array)), transformers_reference(Image.fromarray(array)), f"{name} {array.shape}")


@pytest.mark.parametrize("upscale", [False, True], ids=["downscale", "upscale"])
def test_matches_torchvision_pipeline(photos, upscale):
    ours = torchvision_clip_preprocess(224)
    for name, array in photos.items():
        array = shrunk(array) if upscale else array
        assert_close(ours(to_model_range(array)), torchvision_reference(Image.fromarray(array)), f"{name} {array.shape}")


def test_crop_offset_follows_each_library(photos):
    """On a 224 x 227 image the centred crop starts at column 1 (transformers) or 2 (torchvision)."""
    array = np.ascontiguousarray(photos["astronaut"][:224, :227])
    x = to_model_range(array)
    floor, rounded = ImagePreprocess()(x), torchvision_clip_preprocess()(x)
    assert (floor - rounded).abs().max() > 10 * GREY  # a one-pixel shift is visible
    assert_close(floor, transformers_reference(Image.fromarray(array)), "floor crop")
    assert_close(rounded, torchvision_reference(Image.fromarray(array)), "rounded crop")


def test_gradient_reaches_every_kept_pixel():
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 300, 256) * 1.8 - 0.9).requires_grad_(True)
    out = ImagePreprocess()(x)
    assert out.shape == (2, 3, 224, 224)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    # the crop drops (262 - 224) / 2 rows of the resized image at the top and bottom: about 22 input rows
    kept = x.grad[:, :, 30:-30]
    assert (kept != 0).all(), "a pixel inside the crop gets no gradient"


def test_out_of_range_pixels_are_clamped_like_a_saved_image():
    x = torch.full((1, 3, 224, 224), 1.5)
    ref = ImagePreprocess()(torch.ones(1, 3, 224, 224))
    assert torch.allclose(ImagePreprocess()(x), ref)


def test_config_of_saved_processor_gives_the_default_pipeline(tmp_path):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    CLIPImageProcessorPil().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert preprocess_from_config(config) == ImagePreprocess()


def test_small_images_are_padded_then_cropped():
    x = torch.ones(1, 3, 4, 6)
    out = center_crop(x, 6, 6)
    assert out.shape == (1, 3, 6, 6) and out.sum() == 3 * 4 * 6


def test_unit_range_round_trip():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(to_unit_range(from_unit_range(x)), x, atol=1e-6)
