"""The differentiable VAE decode and its memory options."""

import pytest
import torch

from didr.models.decode import VaeDecoder
from didr.testing import tiny

pytest.importorskip("diffusers")


def test_vae_decode_memory_options_keep_values_and_gradients():
    torch.manual_seed(0)
    vae = tiny.tiny_vae(4).eval().requires_grad_(False)
    z = torch.randn(3, 4, 8, 8)
    outs = []
    for dec in (VaeDecoder(vae), VaeDecoder(vae, micro_batch=1, checkpoint=True)):
        zz = z.clone().requires_grad_(True)
        img = dec(zz)
        (g,) = torch.autograd.grad(img.sum(), zz)
        outs.append((img.detach(), g))
    assert outs[0][0].shape == (3, 3, 16, 16)
    assert vae.is_gradient_checkpointing  # block by block, diffusers' own checkpointing
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-5)
    assert VaeDecoder(vae, downscale=2)(z).shape == (3, 3, 8, 8)
