"""HPSv2.1: an open_clip-layout checkpoint mapped onto transformers' CLIP, loaded and scored."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from didr.errors import ModelLoadError
from didr.hub import key_mismatch
from didr.rewards.base import call_reward
from didr.rewards.hps import VIT_H_14, hps_config, load_hpsv2, open_clip_to_transformers
from didr.testing.reward_models import OPEN_CLIP_CLEANED, letterbox_cases, tiny_hps_config, to_model_range

PROMPTS = ["a photo of an astronaut", "a red cup of coffee"]
#: hpsv2 1.2.0's img_score transform (torchvision 0.29.1) on photographs, written by benchmarks/hps_official.py --golden
LETTERBOX_GOLDEN = Path(__file__).parent / "data" / "hps_letterbox_golden.json"


def test_open_clip_keys_map_onto_transformers_clip_exactly(hps_folder):
    from transformers import CLIPModel

    _, reference = hps_folder
    mapped = open_clip_to_transformers(reference.state_dict())
    model = CLIPModel(hps_config(tiny_hps_config(reference.token_embedding.num_embeddings)))
    missing, unexpected = key_mismatch(model.state_dict().keys(), mapped.keys())
    assert missing == set() and unexpected == set()
    assert all(model.state_dict()[k].shape == v.shape for k, v in mapped.items())


def test_vit_h_14_key_count_matches_open_clip_layout():
    """Full-size ViT-H-14: 32 vision + 24 text blocks of 12 tensors each, plus 17 others, all mapped."""
    from transformers import CLIPModel

    from didr.hub import empty_model

    model = empty_model(lambda: CLIPModel(hps_config(VIT_H_14)))
    # open_clip's ViT-H-14 key list, from model.py / transformer.py (no layer scale, no attention pooling)
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    keys = ["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight", "ln_final.weight", "ln_final.bias",
            "visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
            "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"]
    keys += [f"transformer.resblocks.{i}.{b}" for i in range(24) for b in block]
    keys += [f"visual.transformer.resblocks.{i}.{b}" for i in range(32) for b in block]
    own = model.state_dict()
    fake = {k: torch.empty(0) for k in keys}
    mapped = open_clip_to_transformers(fake)
    missing, unexpected = key_mismatch(own.keys(), mapped.keys())
    assert missing == set() and unexpected == set()
    assert own["vision_model.embeddings.position_embedding.weight"].shape == (257, 1280)
    assert own["text_projection.weight"].shape == (1024, 1024)


def test_hps_matches_open_clip_forward(hps_folder):
    """The mapped model computes open_clip's encode_image / encode_text: q/k/v split, transposed projections, EOT pooling."""
    folder, reference = hps_folder
    reward = load_hpsv2(folder)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 240, 320) * 2 - 1
    tokens = reward.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want_img = F.normalize(reference.encode_image(reward.preprocess(images)), dim=-1)
        want_txt = F.normalize(reference.encode_text(tokens), dim=-1)
        assert torch.allclose(reward.encode_images(images), want_img, atol=1e-5)
        assert torch.allclose(reward.encode_prompts(PROMPTS), want_txt, atol=1e-5)
        got = call_reward(reward, images, PROMPTS)
    # hpsv2's benchmark: 100 * image_features @ text_features.T, diagonal
    assert torch.allclose(got, 100 * (want_img * want_txt).sum(-1), atol=1e-3)
    assert reward.name == "hpsv2.1" and reward.differentiable


def test_hps_gradient_reaches_pixels(hps_folder):
    reward = load_hpsv2(hps_folder[0] / "HPS_v2.1_compressed.pt", config=hps_folder[0], tokenizer=hps_folder[0])
    images = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).float().mean() > 0.99


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"HPS_v2\.1_compressed\.pt"):
        load_hpsv2(tmp_path)


def test_foreign_checkpoint_is_refused_with_its_keys(tmp_path, hps_folder):
    torch.save({"state_dict": {"visual.attn_pool.query": torch.zeros(2, 2)}}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(ModelLoadError, match="visual.attn_pool.query"):
        load_hpsv2(tmp_path, config=hps_folder[0], tokenizer=hps_folder[0])


def test_incomplete_checkpoint_names_missing_keys(tmp_path, hps_folder):
    folder, reference = hps_folder
    state = {k: v for k, v in reference.state_dict().items() if k != "ln_final.weight"}
    torch.save({"state_dict": state}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(ModelLoadError, match="1 missing.*final_layer_norm.weight"):
        load_hpsv2(tmp_path, config=folder, tokenizer=folder)


def test_images_are_letterboxed_as_the_official_scorer_does(hps_folder, photos):
    """Longest edge to 224, bicubic without clamping, centred zero padding: the recorded official output.

    The row and column means place the padding (a crop, or padding one row off, moves them by
    tenths); the sampled pixels check the resampling. Measured: at most 7e-7 (the file rounds to 1e-6).
    """
    reward = load_hpsv2(hps_folder[0])
    golden = json.loads(LETTERBOX_GOLDEN.read_text())["photos"]
    for name, array in letterbox_cases(photos).items():
        want = golden[name]
        assert list(array.shape) == want["input_shape"] and int(array.astype(np.int64).sum()) == want["input_sum"], name
        x = reward.preprocess(to_model_range(array))[0]
        assert x.shape == (3, 224, 224), name
        idx = torch.tensor([s[:3] for s in want["samples"]])
        pairs = [(x.mean(2), want["row_means"]), (x.mean(1), want["col_means"]),
                 (x[idx[:, 0], idx[:, 1], idx[:, 2]], [s[3] for s in want["samples"]])]
        for got, ref in pairs:
            err = (got - torch.tensor(ref)).abs().max()
            assert err < 2e-5, f"{name}: differs from the official transform by {err:.2e}"


def test_prompts_are_cleaned_as_open_clip_does(hps_folder):
    """Each raw prompt scores as its open_clip-cleaned form, tokenised by the same BPE, in the open_clip network."""
    folder, reference = hps_folder
    reward = load_hpsv2(folder)
    raw, cleaned = list(OPEN_CLIP_CLEANED), list(OPEN_CLIP_CLEANED.values())
    tokens = reward.tokenizer(cleaned, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = F.normalize(reference.encode_text(tokens), dim=-1)
        got = reward.encode_prompts(raw)
    errors = (got - want).abs().amax(-1)
    assert (errors < 1e-5).all(), f"prompts encoded unlike their cleaned forms: {[p for p, e in zip(raw, errors) if e >= 1e-5]}"


def test_float16_checkpoint_is_copied_into_a_float32_model(tmp_path, hps_folder):
    """The official code copies a float16 checkpoint into the float32 model it built; so does didr."""
    folder, reference = hps_folder
    half = {k: v.half() for k, v in reference.state_dict().items()}
    torch.save({"state_dict": half}, tmp_path / "HPS_v2.1_compressed.pt")
    reward = load_hpsv2(tmp_path, config=folder, tokenizer=folder)
    assert {p.dtype for p in reward.model.parameters()} == {torch.float32}
    official = copy.deepcopy(reference)
    official.load_state_dict(half)  # copy_ into float32 parameters, as img_score's model.load_state_dict
    torch.manual_seed(3)
    images = torch.rand(2, 3, 200, 300) * 2 - 1
    tokens = reward.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = (F.normalize(official.encode_image(reward.preprocess(images)), dim=-1) * F.normalize(official.encode_text(tokens), dim=-1)).sum(-1)
        assert torch.allclose(reward(images, PROMPTS), 100 * want, atol=1e-4)


def test_dtype_is_the_one_asked_for(tmp_path, hps_folder):
    folder, _ = hps_folder
    reward = load_hpsv2(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in reward.model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(reward(torch.zeros(1, 3, 64, 96), PROMPTS[:1])).all()
    with pytest.raises(ModelLoadError, match="floating-point"):
        load_hpsv2(folder, dtype=torch.int64)
