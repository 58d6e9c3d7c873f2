"""The digits' prompts: text phrasings encoded once, batched with the digit they name, and the null prompt."""

import pytest
import torch

from didr.diffusion.denoiser import GuidedDenoiser, concat_cond
from didr.diffusion.schedules import VPCosineSchedule
from didr.experiments.config import DigitsConfig
from didr.experiments.digits.prompts import text_prompts
from didr.models.text import SentenceEncoder
from didr.models.unet import UNetDenoiser
from tests.models.test_text import _tiny_sentence_encoder


def test_digit_text_prompts_are_encoded_once_and_batched_with_their_digit(tmp_path, monkeypatch):
    enc = _tiny_sentence_encoder(tmp_path)
    calls = []
    monkeypatch.setattr(SentenceEncoder, "from_pretrained", classmethod(lambda cls, path: calls.append(path) or enc))
    cfg = DigitsConfig(prompts="text", text_encoder=str(tmp_path / "tiny"))
    prompts = text_prompts(cfg, 10, tmp_path / "cache")
    again = text_prompts(cfg, 10, tmp_path / "cache")
    assert len(calls) == 1  # the second set came from the cache, without loading the encoder
    torch.testing.assert_close(again.sets["unseen"].rows[5]["text_embeds"], prompts.sets["unseen"].rows[5]["text_embeds"])
    gen = torch.Generator().manual_seed(0)
    index = prompts.pick(torch.tensor([7, 2]), torch.tensor([2, 0]), "unseen", gen)
    cond = prompts.batch(index, "unseen")
    assert cond["digit"].tolist() == [7, 2] and cond["text_embeds"].shape == (2, 16)
    assert cond["prompts"][0] in ("someone wrote a heavy 7", "someone wrote a fat 7", "the number seven, heavy and handwritten", "the number seven, fat and handwritten")
    null = prompts.null_cond(cond)
    assert null["prompts"] == ["", ""]
    torch.testing.assert_close(null["text_embeds"][0], enc([""])[0]["text_embeds"])
    # a text-conditioned UNet: the prompt matters, None is the empty prompt, CFG batches the dicts
    net = UNetDenoiser(VPCosineSchedule(), 10, (8, 16), 1, 0.8, text_dim=16)
    net.null_text.copy_(null["text_embeds"][0])
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    torch.testing.assert_close(net(x, t, None), net(x, t, null))
    other = prompts.batch(prompts.pick(torch.tensor([1, 1]), torch.tensor([0, 0]), "seen", gen))
    assert not torch.allclose(net(x, t, cond), net(x, t, other))
    guided = GuidedDenoiser(net, 2.0, prompts.null_cond)
    torch.testing.assert_close(guided(x, t, cond), net(x, t, null) + 2.0 * (net(x, t, cond) - net(x, t, null)), atol=1e-5, rtol=1e-5)
    assert concat_cond(null, cond)["digit"].tolist() == [-1, -1, 7, 2]
    with pytest.raises(TypeError, match="text"):
        net(x, t, torch.tensor([1, 2]))
