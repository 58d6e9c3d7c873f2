"""ImageReward: an ImageReward.pt-shaped checkpoint mapped onto transformers' BLIP, loaded and scored."""

from __future__ import annotations

import pytest
import torch

from didr.errors import ModelLoadError
from didr.hub import key_mismatch
from didr.rewards.base import call_reward
from didr.rewards.image_reward import (
    IGNORED_KEYS,
    SCORE_MEAN,
    SCORE_STD,
    ImageRewardModel,
    load_image_reward,
    map_image_reward_state_dict,
    text_config_from_med,
    vision_config_from_state_dict,
)
from didr.testing.reward_models import official_image_reward_state

PROMPTS = ["a photo of an astronaut", "a red cup of coffee"]


def test_official_layout_maps_with_no_missing_or_unexpected_keys():
    state, med, _ = official_image_reward_state(vocab_size=50)
    mapped = map_image_reward_state_dict(state)
    vision_cfg = vision_config_from_state_dict(state)
    model = ImageRewardModel(vision_cfg, text_config_from_med(med, vision_cfg.hidden_size))
    missing, unexpected = key_mismatch(model.state_dict().keys(), mapped.keys())
    assert missing == set() and unexpected == set()
    assert all(model.state_dict()[k].shape == v.shape for k, v in mapped.items())
    # only BLIP's contrastive projections and the position-id buffer are left out
    dropped = {k for k in state if IGNORED_KEYS.search(k)}
    assert dropped == {"blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias",
                       "blip.text_encoder.embeddings.position_ids"}
    assert (vision_cfg.num_hidden_layers, vision_cfg.num_attention_heads, vision_cfg.image_size) == (2, 2, 224)


def test_vision_tower_matches_blip_vit(image_reward_folder):
    """The mapped BlipVisionModel computes BLIP's timm ViT (vit.py): qkv layout, eps 1e-6, post-norm."""
    folder, vit = image_reward_folder
    reward = load_image_reward(folder)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        got = reward.model.vision_model(pixel_values=pixels).last_hidden_state
        assert torch.allclose(got, vit.eval()(pixels), atol=1e-5)


def test_score_is_standardised_head_on_cls_state(image_reward_folder):
    folder, _ = image_reward_folder
    reward = load_image_reward(folder)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 256, 320) * 2 - 1
    tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (2, 35) and (tokens["input_ids"][:, 0] == reward.tokenizer.cls_token_id).all()
    with torch.no_grad():
        got = call_reward(reward, images, PROMPTS)
        embeds = reward.model.vision_model(pixel_values=reward.preprocess(images)).last_hidden_state
        cls = reward.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                        encoder_hidden_states=embeds, is_decoder=False).last_hidden_state[:, 0]
        want = (reward.model.mlp(cls).squeeze(-1) - SCORE_MEAN) / SCORE_STD
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got[0], got[1]), "different images and prompts should score differently"
    assert reward.name == "imagereward" and reward.differentiable


def test_gradient_reaches_pixels(image_reward_folder):
    reward = load_image_reward(image_reward_folder[0] / "ImageReward.pt", tokenizer=image_reward_folder[0])
    images = (torch.rand(2, 3, 224, 224) * 2 - 1).requires_grad_(True)
    call_reward(reward, images, PROMPTS).sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).float().mean() > 0.99


def test_tokenizer_gets_blip_tokens(image_reward_folder):
    reward = load_image_reward(image_reward_folder[0])
    tok = reward.tokenizer
    vocab_size = reward.model.text_encoder.config.vocab_size
    # as blip.py's init_tokenizer: [DEC] (bos) and [ENC] appended after BERT's vocabulary
    assert tok.bos_token == "[DEC]" and tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [vocab_size - 2, vocab_size - 1]
    assert len(tok) == vocab_size and tok.tokenize("a [ENC] cat") == ["a", "[ENC]", "cat"]


def test_missing_files_are_named(tmp_path, image_reward_folder):
    with pytest.raises(ModelLoadError, match=r"ImageReward\.pt"):
        load_image_reward(tmp_path)
    (tmp_path / "ImageReward.pt").write_bytes((image_reward_folder[0] / "ImageReward.pt").read_bytes())
    with pytest.raises(ModelLoadError, match=r"med_config\.json"):
        load_image_reward(tmp_path)


def test_unknown_checkpoint_key_is_named():
    state, _, _ = official_image_reward_state(vocab_size=50)
    state["blip.text_decoder.cls.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError, match="blip.text_decoder.cls.weight"):
        map_image_reward_state_dict(state)


def test_float16_checkpoint_is_copied_into_a_float32_model(tmp_path, image_reward_folder):
    """ImageReward.py copies the checkpoint into the float32 model it built (load_state_dict)."""
    import shutil

    folder, _ = image_reward_folder
    for name in ("med_config.json", "vocab.txt"):
        shutil.copy(folder / name, tmp_path / name)
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "ImageReward.pt")
    reward = load_image_reward(tmp_path)
    assert {p.dtype for p in reward.model.parameters()} == {torch.float32}
    rounded = load_image_reward(folder)
    with torch.no_grad():
        for p in rounded.model.parameters():  # the float32 model holding the float16 values
            p.copy_(p.half())
        images = torch.rand(2, 3, 224, 224) * 2 - 1
        assert torch.allclose(reward(images, PROMPTS), rounded(images, PROMPTS), atol=1e-5)
