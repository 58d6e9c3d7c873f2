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

from didr.rewards.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImagePreprocess,
    LetterboxPreprocess,
    center_crop,
    from_unit_range,
    longest_edge_size,
    normalize,
    preprocess_from_config,
    to_unit_range,
    torchvision_clip_preprocess,
)
from didr.testing.reward_models import to_model_range, torchvision_reference, transformers_reference

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


# ---------------------------------------------------------------- letterbox (HPSv2); official output in test_hps.py

PAD = normalize(torch.zeros(1, 3, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).flatten().tolist()  # a zero (black) pixel, normalised


def is_padding(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (H, W) mask of the pixels that hold the normalised zero in every channel."""
    return torch.stack([(x[:, c] == PAD[c]).all(0) for c in range(3)]).all(0)


@pytest.mark.parametrize(("height", "width", "rows", "cols"), [
    (300, 451, (37, 186), (0, 224)),  # resized to 149 x 224: 75 rows of padding, 37 above and 38 below
    (451, 300, (0, 224), (37, 186)),
    (100, 150, (37, 186), (0, 224)),  # upscaled
    (224, 160, (0, 224), (32, 192)),  # longest edge already 224: padded only
])
def test_letterbox_pads_centred_with_the_odd_line_last(height, width, rows, cols):
    torch.manual_seed(0)
    x = LetterboxPreprocess()(torch.rand(2, 3, height, width) * 1.6 - 0.8)
    assert x.shape == (2, 3, 224, 224)
    content = torch.zeros(224, 224, dtype=torch.bool)
    content[rows[0] : rows[1], cols[0] : cols[1]] = True
    assert torch.equal(is_padding(x), ~content)


def test_longest_edge_follows_python_round():
    assert longest_edge_size(300, 451, 224) == (149, 224)
    assert longest_edge_size(640, 427, 224) == (224, 149)  # 149.45
    assert longest_edge_size(512, 512, 224) == (224, 224)


def test_letterbox_keeps_the_bicubic_overshoot(photos):
    """No clamp after the resize: a sharp edge, upscaled, rings past white and black, as on torchvision's float path."""
    x = torch.full((1, 3, 20, 30), -1.0)
    x[..., 10:] = 1.0
    out = LetterboxPreprocess()(x)
    white = [(1 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)]
    assert all(out[0, c].max() > white[c] + 0.05 and out[0, c].min() < PAD[c] - 0.05 for c in range(3))


def test_letterbox_gradient_reaches_every_pixel():
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 300, 256) * 1.8 - 0.9).requires_grad_(True)
    out = LetterboxPreprocess()(x)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).all(), "a letterbox keeps the whole image"
