"""PickScore, CLIPScore and the aesthetic predictor: tiny random models saved to disk, loaded by the real loaders.

Each is compared with its official computation, once on the same pixel values (exact, 1e-5)
and once with the official PIL preprocessing of the uint8 photograph (within what the 1.5 grey
level tolerance of test_preprocess.py allows after the model's gain).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from didr.errors import ModelLoadError, RewardError
from didr.rewards.base import call_reward
from didr.rewards.clip import load_aesthetic, load_clipscore, load_pickscore
from didr.rewards.heads import MLPHead
from didr.testing.reward_models import to_model_range, torchvision_reference, transformers_reference

PROMPTS = ["a photo of an astronaut", "a red cup of coffee"]


@pytest.fixture(scope="module")
def pickscore(clip_folder):
    return load_pickscore(clip_folder)


def two_photos(photos) -> tuple[torch.Tensor, list[np.ndarray]]:
    arrays = [np.ascontiguousarray(photos[n][:300, :400]) for n in ("astronaut", "coffee")]
    return torch.cat([to_model_range(a) for a in arrays]), arrays


def official_clip_similarity(folder, pixels, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, logit_scale.exp()) as PickScore's README computes them, on given pixel values."""
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    text = tok(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(**text).pooler_output)
    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1), model.logit_scale.exp()


def test_pickscore_matches_official_computation(pickscore, clip_folder, photos):
    images, arrays = two_photos(photos)
    with torch.no_grad():
        got = call_reward(pickscore, images, PROMPTS)
    cos, scale = official_clip_similarity(clip_folder, pickscore.preprocess(images), PROMPTS)
    assert torch.allclose(got, scale * cos, atol=1e-5)  # same pixels: exact
    pil_pixels = torch.cat([transformers_reference(Image.fromarray(a)) for a in arrays])
    cos, scale = official_clip_similarity(clip_folder, pil_pixels, PROMPTS)
    assert torch.allclose(got, scale * cos, atol=1e-3 * scale.item())  # official PIL preprocessing
    assert pickscore.name == "pickscore" and pickscore.differentiable and pickscore.higher_is_better


def test_pickscore_gradient_reaches_pixels(pickscore):
    torch.manual_seed(0)
    images = (torch.rand(2, 3, 96, 128) * 2 - 1).requires_grad_(True)
    call_reward(pickscore, images, PROMPTS).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert (images.grad[:, :, :, 20:-20] != 0).float().mean() > 0.99
    assert all(p.grad is None for p in pickscore.parameters()), "the reward model's weights must stay frozen"


def test_one_prompt_is_broadcast_and_a_wrong_count_is_refused(pickscore):
    images = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(pickscore(images, "a cat"), pickscore(images, ["a cat", "a cat"]))
    with pytest.raises(RewardError, match="pickscore.*3 prompts for 2 images"):
        pickscore(images, ["a", "b", "c"])


def test_clipscore_is_scaled_clamped_cosine(clip_folder, photos):
    images, arrays = two_photos(photos)
    reward = load_clipscore(clip_folder, scale=2.5)
    cos, _ = official_clip_similarity(clip_folder, reward.preprocess(images), PROMPTS)
    with torch.no_grad():
        got = call_reward(reward, images, PROMPTS)
    assert torch.allclose(got, 2.5 * cos.clamp_min(0), atol=1e-6)
    assert (got >= 0).all()


def official_aesthetic(folder, pixels: torch.Tensor) -> torch.Tensor:
    """simple_inference.py: CLIP image features, L2-normalised, through the MLP head."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    head = MLPHead(16)
    head.load_state_dict(torch.load(folder / "sac+logos+ava1-l14-linearMSE.pth", weights_only=True))
    with torch.no_grad():
        emb = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        return head.eval()(F.normalize(emb, dim=-1)).squeeze(-1)


def test_aesthetic_matches_official_computation(aesthetic_folder, photos):
    reward = load_aesthetic(aesthetic_folder)
    images, arrays = two_photos(photos)
    with torch.no_grad():
        got = call_reward(reward, images, None)
    # same pixels: the model path is exact
    assert torch.allclose(got, official_aesthetic(aesthetic_folder, reward.preprocess(images)), atol=1e-5)
    # official PIL preprocessing (OpenAI clip.load's transform): within the 1.5-grey-level preprocessing tolerance,
    # which this random head (weights of std 0.3, a gain of about 30) turns into at most 0.01
    pil_pixels = torch.cat([torchvision_reference(Image.fromarray(a)) for a in arrays])
    assert torch.allclose(got, official_aesthetic(aesthetic_folder, pil_pixels), atol=1e-2)
    assert got.std() > 0.1, "the two photographs should score differently"


def test_aesthetic_gradient_reaches_pixels(aesthetic_folder):
    reward = load_aesthetic(aesthetic_folder / "sac+logos+ava1-l14-linearMSE.pth", clip=aesthetic_folder)
    images = (torch.rand(1, 3, 224, 224) * 2 - 1).requires_grad_(True)
    reward(images).sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).float().mean() > 0.99


def test_missing_head_file_is_named(tmp_path, clip_folder):
    with pytest.raises(ModelLoadError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth"):
        load_aesthetic(tmp_path, clip=clip_folder)


def test_missing_weight_file_is_named(tmp_path, clip_folder):
    (tmp_path / "config.json").write_text((clip_folder / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_pickscore(tmp_path, processor=clip_folder)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere"):
        load_pickscore(tmp_path / "nowhere")


def test_train_mode_of_a_parent_does_not_reach_the_reward_model(pickscore):
    parent = torch.nn.ModuleDict({"reward": pickscore}).train()
    assert not parent["reward"].model.training
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(pickscore(images, "a cat"), pickscore(images, "a cat"))


def test_prompts_reach_the_tokenizer_unchanged(pickscore):
    """PickScore's official code passes raw prompts to transformers' CLIP processor: no open_clip cleaning."""
    raw = ["Van Gogh’s starry night", "a ﬁne &amp; ＷＩＤＥ cat"]
    want = pickscore.tokenizer(raw, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    assert torch.equal(pickscore.tokenize(raw)["input_ids"], want)


def test_float16_model_loads_as_float32(tmp_path, clip_folder):
    """transformers 5 keeps a checkpoint's dtype; the official code (transformers 4) built float32 models."""
    from transformers import CLIPModel

    half = CLIPModel.from_pretrained(clip_folder, dtype=torch.float16)
    half.save_pretrained(tmp_path)
    reward = load_pickscore(tmp_path, processor=clip_folder)
    assert {p.dtype for p in reward.model.parameters()} == {torch.float32}
    official = CLIPModel.from_pretrained(tmp_path, dtype=torch.float32)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        img = F.normalize(official.visual_projection(official.vision_model(pixel_values=reward.preprocess(images)).pooler_output), dim=-1)
        txt = F.normalize(official.text_projection(official.text_model(**reward.tokenize(PROMPTS)).pooler_output), dim=-1)
        assert torch.allclose(reward(images, PROMPTS), official.logit_scale.exp() * (img * txt).sum(-1), atol=1e-4)
    assert {p.dtype for p in load_clipscore(tmp_path, processor=clip_folder, dtype=torch.bfloat16).model.parameters()} == {torch.bfloat16}
