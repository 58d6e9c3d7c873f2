"""The exported network folder: one adapter folded in (no other), written shard by shard in the
layout diffusers loads."""

import copy
import json

import pytest
import torch

from didr.diffusion.schedules import VPDiscreteSchedule
from didr.models.backbones import make_denoiser
from didr.models.export import generator_adapter, save_merged_network
from didr.models.lora import add_lora
from didr.models.shared import SharedDenoiser
from didr.testing import tiny

diffusers = pytest.importorskip("diffusers")


def two_adapter_unet():
    torch.manual_seed(0)
    net = tiny.tiny_sdxl_unet().to(torch.bfloat16)  # a bf16 base, as the real presets store it
    add_lora(net, 4, "generator")
    add_lora(net, 4, "ta")
    for name, p in net.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("shard_bytes", [2**30, 200_000])
def test_merged_network_loads_in_diffusers_and_equals_the_generator_role(tmp_path, shard_bytes):
    from diffusers import UNet2DConditionModel

    net = two_adapter_unet()
    gen = SharedDenoiser(make_denoiser(net, VPDiscreteSchedule(), "unet"), "generator")
    assert generator_adapter(gen) == "generator"
    save_merged_network(net, "generator", tmp_path / "unet", shard_bytes)
    index = tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    assert index.is_file() == (shard_bytes < 2**30)
    if index.is_file():
        assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    plain = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert next(plain.parameters()).dtype == torch.float32 and not any("lora" in k for k in plain.state_dict())
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.3, 0.8])
    cond = {"encoder_hidden_states": torch.randn(2, 7, 64, generator=g), "text_embeds": torch.randn(2, 32, generator=g),
            "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).expand(2, 6)}
    upcast = SharedDenoiser(make_denoiser(copy.deepcopy(net).float(), VPDiscreteSchedule(), "unet"), "generator")
    with torch.no_grad():
        ours = upcast(x, t, cond)  # bf16 base weights and float32 adapters, computed in float32
        theirs = make_denoiser(plain, VPDiscreteSchedule(), "unet")(x, t, cond)
        ta = SharedDenoiser(upcast.base, "ta")(x, t, cond)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    assert (ours - ta).abs().max() > 1e-2  # the TA's adapter is not in the export


def test_a_copied_export_takes_the_files_from_pretrained_reads_and_no_variants(tmp_path):
    """A base repo's component folder holds fp16, ONNX and Flax variants next to the default weights:
    the copy takes configs, tokenizer files and the default safetensors (sharded or not) alone."""
    from didr.models.export import is_loaded_file, place_frozen

    names = ["config.json", "model.safetensors", "model.fp16.safetensors", "model.onnx", "flax_model.msgpack", "model-00001-of-00002.safetensors",
             "model.safetensors.index.json", "model.safetensors.index.fp16.json", "model.fp16-00001-of-00002.safetensors", "vocab.json",
             "merges.txt", "spiece.model", "chat_template.jinja", "diffusion_pytorch_model.non_ema.safetensors"]
    kept = {n for n in names if is_loaded_file(n)}
    assert kept == {"config.json", "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "vocab.json",
                    "merges.txt", "spiece.model", "chat_template.jinja"}
    for name in names:
        (tmp_path / "base" / "text_encoder").mkdir(parents=True, exist_ok=True)
        (tmp_path / "base" / "text_encoder" / name).write_text("x")
    (tmp_path / "out").mkdir()
    written = place_frozen(tmp_path / "base", tmp_path / "out", ["text_encoder"], "copy")
    assert {p.name for p in (tmp_path / "out" / "text_encoder").iterdir()} == kept and written == len(kept)


def test_a_half_precision_export_halves_the_network_and_rounds_the_float32_one(tmp_path):
    from diffusers import UNet2DConditionModel

    net = two_adapter_unet()
    save_merged_network(net, "generator", tmp_path / "full")
    save_merged_network(net, "generator", tmp_path / "half", dtype=torch.bfloat16)
    size = {k: (tmp_path / k / "diffusion_pytorch_model.safetensors").stat().st_size for k in ("full", "half")}
    assert size["half"] < 0.55 * size["full"]
    full = UNet2DConditionModel.from_pretrained(tmp_path / "full").state_dict()
    half = UNet2DConditionModel.from_pretrained(tmp_path / "half", dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
