"""Reference, TA and generator as roles on one network: each runs its own adapter over one set of base
weights, and checkpointing recomputes each block under the role that ran it."""

import copy

import pytest
import torch

from didr.diffusion.schedules import VPDiscreteSchedule
from didr.errors import ConfigError
from didr.models.backbones import make_denoiser
from didr.models.generators import StepGenerator
from didr.models.lora import add_lora, merged_copy
from didr.models.shared import SharedDenoiser, enable_checkpointing
from didr.testing import tiny

pytest.importorskip("diffusers")
pytest.importorskip("peft")


def shared_unet():
    """A tiny UNet with a "generator" and a "ta" adapter, both nonzero, and its plain copy."""
    torch.manual_seed(0)
    net = tiny.tiny_sdxl_unet()
    plain = copy.deepcopy(net).eval()
    add_lora(net, 4, "generator")
    add_lora(net, 2, "ta")
    for name, p in net.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return net, plain


def roles(net):
    base = make_denoiser(net, VPDiscreteSchedule(), "unet")
    return SharedDenoiser(base), SharedDenoiser(base, "ta"), SharedDenoiser(base, "generator")


def test_roles_share_one_network_and_each_runs_its_own_adapter():
    """Reference, TA and generator on one network: each role's output is the plain network with its
    own adapter alone folded in, each role owns only its adapter's weights, and both adapters train."""
    net, plain = shared_unet()
    ref, ta, gen = roles(net)
    ref.requires_grad_(False)  # what the training loop does to the reference: it owns nothing to freeze
    assert list(ref.parameters()) == []
    for role, name in ((ta, "ta"), (gen, "generator")):
        own = {id(p) for n, p in net.named_parameters() if "lora_" in n and f".{name}." in n}
        assert {id(p) for p in role.parameters()} == own and all(p.requires_grad for p in role.parameters())
    assert not any(p.requires_grad for n, p in net.named_parameters() if "lora_" not in n)
    gen_x = torch.Generator().manual_seed(5)
    x, cond, t = torch.randn(2, 4, 8, 8, generator=gen_x), tiny.tiny_sdxl_cond(2, gen_x), torch.tensor([0.3, 0.6])
    schedule = VPDiscreteSchedule()
    with torch.no_grad():
        torch.testing.assert_close(ref(x, t, cond), make_denoiser(plain, schedule, "unet")(x, t, cond), rtol=1e-5, atol=1e-5)
        for role, name in ((ta, "ta"), (gen, "generator")):
            alone = make_denoiser(merged_copy(net, name), schedule, "unet")(x, t, cond)
            torch.testing.assert_close(role(x, t, cond), alone, rtol=1e-4, atol=1e-4)
        assert (ta(x, t, cond) - gen(x, t, cond)).abs().max() > 1e-3


def gradients_through_three_roles(checkpointing: bool):
    """A generator call, then the reference and the TA on its output, on one network: what DIDR's
    generator step does. Returns the gradients of the input and of both adapters."""
    net, _ = shared_unet()
    if checkpointing:
        enable_checkpointing(net)
    ref, ta, gen = roles(net)
    gen_x = torch.Generator().manual_seed(7)
    z, cond, t = torch.randn(2, 4, 8, 8, generator=gen_x).requires_grad_(True), tiny.tiny_sdxl_cond(2, gen_x), torch.tensor([0.4, 0.7])
    x0 = gen(z, t, cond)
    loss = ref(x0, t * 0.5, cond).square().mean() + ta(x0, t * 0.5, cond).abs().mean()
    weights = list(gen.parameters()) + list(ta.parameters())
    return torch.autograd.grad(loss, [z] + weights)


def test_checkpointed_blocks_are_recomputed_under_their_own_role():
    """Block checkpointing recomputes each block in the backward pass, when another role is active:
    the gradients must be those of the uncheckpointed run."""
    plain, ckpt = gradients_through_three_roles(False), gradients_through_three_roles(True)
    assert any(g.abs().max() > 0 for g in plain[1:])
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_checkpointing_that_ignores_roles_is_refused():
    net, _ = shared_unet()
    net.enable_gradient_checkpointing()  # diffusers' own function: recomputes under whatever adapter is active
    _, ta, _ = roles(net)
    gen_x = torch.Generator().manual_seed(7)
    with pytest.raises(ConfigError, match="enable_checkpointing"):
        ta(torch.randn(1, 4, 8, 8), torch.tensor([0.5]), tiny.tiny_sdxl_cond(1, gen_x))


def test_a_copy_of_a_role_shares_the_frozen_base():
    """An EMA of a generator role copies its adapter, never the network's frozen weights."""
    net, _ = shared_unet()
    _, _, gen = roles(net)
    generator = StepGenerator(gen, [0.4])
    ema = copy.deepcopy(generator)
    frozen = {p.data_ptr() for n, p in net.named_parameters() if "lora_" not in n}
    ema_net = ema.denoiser.net
    assert ema_net is not net and {p.data_ptr() for n, p in ema_net.named_parameters() if "lora_" not in n} == frozen
    ours, theirs = dict(generator.named_parameters()), dict(ema.named_parameters())
    assert ours.keys() == theirs.keys() and all(ours[k].data_ptr() != theirs[k].data_ptr() for k in ours)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)  # the original trains on; its copy keeps the old adapter
    gen_x = torch.Generator().manual_seed(3)
    z, cond = torch.randn(1, 4, 8, 8, generator=gen_x), tiny.tiny_sdxl_cond(1, gen_x)
    with torch.no_grad():
        assert (generator(z, cond) - ema(z, cond)).abs().max() > 1e-3
