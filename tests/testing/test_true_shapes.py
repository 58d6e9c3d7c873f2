"""The published configurations build the released networks: their parameter counts are the
released models', and pipeline folders written from them train through `didr train`."""

import json

import pytest
import torch

from didr.testing import true_shapes

diffusers = pytest.importorskip("diffusers")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_published_configs_build_the_released_parameter_counts():
    from accelerate import init_empty_weights

    with init_empty_weights():
        assert count(true_shapes.sdxl_unet()) == 2_567_463_684  # SDXL base 1.0's UNet
        assert count(true_shapes.zimage_transformer()) == 6_154_908_736  # Z-Image's 6.15 B DiT
        assert count(true_shapes.vae("sdxl")) == 83_653_863
        assert count(true_shapes.vae("zimage")) == 83_819_683
        assert count(true_shapes.clip_h()) == 986_109_441  # PickScore's CLIP ViT-H/14
        cut = true_shapes.zimage_transformer(n_layers=2)
    assert len(cut.layers) == 2 and cut.config.dim == 3840  # full width, fewer blocks
    widths = true_shapes.published_config("sdxl_text_encoder")["hidden_size"] + true_shapes.published_config("sdxl_text_encoder_2")["hidden_size"]
    assert widths == true_shapes.published_config("sdxl_unet")["cross_attention_dim"]
    assert true_shapes.published_config("zimage_text_encoder")["hidden_size"] == true_shapes.published_config("zimage_transformer")["cap_feat_dim"]


def test_published_config_names_are_checked():
    with pytest.raises(KeyError, match="choose one of"):
        true_shapes.published_config("sdxl_unet_v2")
    a = true_shapes.published_config("sdxl_unet")
    a["in_channels"] = 9
    assert true_shapes.published_config("sdxl_unet")["in_channels"] == 4  # a fresh copy each time


@pytest.mark.slow
def test_full_width_zimage_trains_from_its_folder(tmp_path):
    """Z-Image at full width (one main block, so that it fits a test), its VAE and PickScore's
    ViT-H/14: written as folders, loaded by `didr train` through from_pretrained, one DIDR step, exported."""
    from didr.cli import main

    true_shapes.save_zimage_pipeline(tmp_path / "zimage", dtype=torch.bfloat16, n_layers=1)
    true_shapes.save_clip_h(tmp_path / "clip", dtype=torch.bfloat16)
    cfg = {
        "experiment": "text-to-image",
        "method": {"name": "didr", "drp_steps": 2, "drp_checkpoint": True},
        "backbone": {"kind": "zimage", "pretrained": str(tmp_path / "zimage"), "prompt_list": ["a cat"], "reward": f"pickscore:{tmp_path / 'clip'}",
                     "resolution": 64, "max_sequence_length": 32, "generator_lora_rank": 4, "ta_lora_rank": 4, "dtype": "bfloat16",
                     "autocast": "bf16", "gradient_checkpointing": True, "decode_checkpoint": True, "device": "cpu"},
        "train": {"steps": 1, "batch_size": 1, "ta_updates": 1, "progress": False, "log_every": 1},
    }
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["bad_steps"] == 0 and "drs_norm" in metrics
    net = diffusers.ZImageTransformer2DModel.from_pretrained(tmp_path / "out" / "export" / "transformer")
    assert net.config.dim == 3840 and len(net.layers) == 1
