"""LoRA on diffusers networks: the fused export equals the adapted network, the saved LoRA loads
into the stock pipeline and back in as a named adapter, and bf16 autocast runs the adapters."""

import copy

import pytest
import torch

from didr.diffusion.schedules import VPDiscreteSchedule
from didr.errors import ModelLoadError
from didr.models.backbones import backbone, make_denoiser
from didr.models.export import save_lora
from didr.models.lora import adapter_rank, add_lora, load_lora, lora_state_dict, merged_copy
from didr.testing import tiny

pytest.importorskip("peft")


def sdxl_inputs():
    gen = torch.Generator().manual_seed(0)
    cond = {"encoder_hidden_states": torch.randn(2, 7, 64, generator=gen), "text_embeds": torch.randn(2, 32, generator=gen),
            "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).expand(2, 6)}
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([0.4, 0.7]), cond


def trained_lora_unet(base=None):
    torch.manual_seed(0)
    unet = add_lora((base or tiny.tiny_sdxl_unet()).eval(), 4, "generator")
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    return unet


def test_only_the_adapter_trains_and_the_fused_copy_matches():
    unet = trained_lora_unet()
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == {n for n, _ in unet.named_parameters() if "lora_" in n}
    x, t, cond = sdxl_inputs()
    schedule = VPDiscreteSchedule()
    with torch.no_grad():
        adapted = make_denoiser(unet, schedule, "unet")(x, t, cond)
        fused = make_denoiser(merged_copy(unet, "generator"), schedule, "unet")(x, t, cond)
    torch.testing.assert_close(fused, adapted, rtol=1e-4, atol=1e-4)


def test_saved_lora_loads_into_stock_pipeline(tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    base = tmp_path / "pipe"
    tiny.save_tiny_sdxl(base)
    plain = UNet2DConditionModel.from_pretrained(base / "unet")
    unet = trained_lora_unet(copy.deepcopy(plain))  # the adapter on the pipeline's own base weights
    save_lora(backbone("sdxl"), lora_state_dict(unet, "generator"), tmp_path / "lora")
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    pipe.load_lora_weights(tmp_path / "lora")
    x, t, cond = sdxl_inputs()
    schedule = VPDiscreteSchedule()
    with torch.no_grad():
        ours = make_denoiser(unet, schedule, "unet")(x, t, cond)
        stock = make_denoiser(pipe.unet, schedule, "unet")(x, t, cond)
        before = make_denoiser(plain, schedule, "unet")(x, t, cond)
    torch.testing.assert_close(stock, ours, rtol=1e-4, atol=1e-4)
    assert (stock - before).abs().max() > 1e-3


def test_bf16_autocast_runs_close_to_float32():
    torch.manual_seed(0)
    unet = tiny.tiny_sdxl_unet().eval()
    x, t, cond = sdxl_inputs()
    full = make_denoiser(unet, VPDiscreteSchedule(), "unet")
    half = make_denoiser(copy.deepcopy(unet), VPDiscreteSchedule(), "unet", autocast_mode="bf16")
    with torch.no_grad():
        a, b = full(x, t, cond), half(x, t, cond)
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_frozen_initial_is_the_base_without_a_copy():
    """ReFL's target for a LoRA-trained network is its frozen base, reached by switching the
    adapters off; a fully trained network gets a frozen copy instead."""
    from didr.models.lora import AdaptersOff, FrozenCopy, frozen_initial

    base = tiny.tiny_sdxl_unet().eval()
    x, t, cond = sdxl_inputs()
    schedule = VPDiscreteSchedule()
    with torch.no_grad():
        plain = make_denoiser(copy.deepcopy(base), schedule, "unet")(x, t, cond)
    den = make_denoiser(trained_lora_unet(copy.deepcopy(base)), schedule, "unet")
    initial = frozen_initial(den)
    assert isinstance(initial, AdaptersOff) and list(initial.parameters()) == []
    torch.testing.assert_close(initial(x, t, cond), plain)
    with torch.no_grad():
        assert (den(x, t, cond) - plain).abs().max() > 1e-3  # the adapter is on again afterwards
    full = make_denoiser(copy.deepcopy(base).requires_grad_(True), schedule, "unet")
    frozen = frozen_initial(full)
    with torch.no_grad():
        next(full.parameters()).add_(1.0)
    assert isinstance(frozen, FrozenCopy) and not any(p.requires_grad for p in frozen.parameters())
    torch.testing.assert_close(frozen(x, t, cond), plain)


def test_a_released_lora_loads_as_a_named_trainable_adapter(tmp_path):
    """A LoRA file in the pipeline's format (DMD2 releases its SDXL LoRA so) becomes adapter
    "generator" beside an existing "ta": same outputs as the network it was saved from, both adapters train."""
    unet = trained_lora_unet()
    save_lora(backbone("sdxl"), lora_state_dict(unet, "generator"), tmp_path / "lora")
    torch.manual_seed(0)
    fresh = add_lora(tiny.tiny_sdxl_unet().eval(), 2, "ta")
    load_lora(fresh, backbone("sdxl"), str(tmp_path / "lora"), "generator")
    assert adapter_rank(fresh, "generator") == 4 and adapter_rank(fresh, "ta") == 2
    assert all(p.requires_grad for n, p in fresh.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "lora_" not in n)
    x, t, cond = sdxl_inputs()
    schedule = VPDiscreteSchedule()
    with torch.no_grad():
        torch.testing.assert_close(make_denoiser(merged_copy(fresh, "generator"), schedule, "unet")(x, t, cond),
                                   make_denoiser(merged_copy(unet, "generator"), schedule, "unet")(x, t, cond), rtol=1e-4, atol=1e-4)


def test_a_lora_file_that_does_not_fit_is_refused(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="generator_lora"):
        load_lora(tiny.tiny_sdxl_unet(), backbone("sdxl"), str(tmp_path / "empty.safetensors"), "generator")
