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
