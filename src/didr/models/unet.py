"""A small conditional UNet (class indices or sentence embeddings) behind the Denoiser interface
(M2), for 8x8 and 28x28 digits.

Same preconditioning as :class:`didr.models.mlp.MLPDenoiser` (EDM, Karras et al. 2022, Table 1,
for x_t = a x_0 + s eps), so every noise level trains at unit scale and DSM converges in a few
thousand steps on a CPU. The data enter through their own convolution and the noise level and
condition through a separate embedding that modulates every block (scale and shift after the second
normalisation), so neither input drowns the other.

``patch`` > 1 folds patch x patch pixels into channels first (a strided convolution, undone by a
transposed one at the output): a 28x28 image then runs at 14x14 and 7x7, four times cheaper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from didr.diffusion.denoiser import Denoiser, PreconditionedDenoiser
from didr.diffusion.schedules import NoiseSchedule
from didr.models.mlp import FourierEmbedding


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding as a per-channel scale and shift in between."""

    def __init__(self, c_in: int, c_out: int, d_emb: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(d_emb, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class SmallUNet(nn.Module):
    """Two resolutions (full and half, after the optional patch folding), one block each, a
    middle block and one up block with a skip connection."""

    def __init__(self, channels: tuple[int, int] = (32, 64), d_emb: int = 128, patch: int = 1, in_ch: int = 1):
        super().__init__()
        c0, c1 = channels
        self.stem = nn.Conv2d(in_ch, c0, patch, stride=patch) if patch > 1 else nn.Conv2d(in_ch, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, d_emb)
        self.downsample = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.down1 = ResBlock(c1, c1, d_emb)
        self.mid = ResBlock(c1, c1, d_emb)
        self.up0 = ResBlock(c1 + c0, c0, d_emb)
        self.out_norm = _norm(c0)
        self.head = nn.ConvTranspose2d(c0, in_ch, patch, stride=patch) if patch > 1 else nn.Conv2d(c0, in_ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h0 = self.down0(self.stem(x), emb)
        h = self.mid(self.down1(self.downsample(h0), emb), emb)
        h = F.interpolate(h, size=h0.shape[-2:], mode="nearest")
        h = self.up0(torch.cat([h, h0], dim=1), emb)
        return self.head(F.silu(self.out_norm(h)))


class UNetDenoiser(PreconditionedDenoiser):
    """A small conditional UNet behind EDM's preconditioning (see
    :class:`didr.diffusion.denoiser.PreconditionedDenoiser`).

    Two kinds of ``cond``:
    - class indices, a (B,) tensor; index ``n_classes`` is the null class that classifier-free
      guidance (M4) uses;
    - text (``text_dim`` set): a dict with ``text_embeds`` (B, text_dim), a sentence embedding
      per prompt (:class:`didr.models.text.PromptSet` batches), projected into the block embedding.
      The null condition is the empty prompt's embedding, kept in the ``null_text`` buffer.
    ``cond=None`` means the null condition for the whole batch.
    """

    def __init__(self, schedule: NoiseSchedule, n_classes: int = 10, channels: tuple[int, int] = (32, 64), patch: int = 1, sigma_data: float = 0.5,
                 d_emb: int = 128, text_dim: int | None = None):
        super().__init__(schedule, sigma_data)
        self.n_classes, self.text_dim = n_classes, text_dim
        self.noise_embed = nn.Sequential(FourierEmbedding(64), nn.Linear(64, d_emb), nn.SiLU(), nn.Linear(d_emb, d_emb))
        if text_dim:
            self.text_embed = nn.Sequential(nn.Linear(text_dim, d_emb), nn.SiLU(), nn.Linear(d_emb, d_emb))
            self.register_buffer("null_text", torch.zeros(text_dim))
        else:
            self.class_embed = nn.Embedding(n_classes + 1, d_emb)
        self.net = SmallUNet(tuple(channels), d_emb, patch)

    def null_cond(self, cond: Tensor) -> Tensor:
        """The null class for a batch of class indices (text prompts take the prompt set's null)."""
        return torch.full_like(cond, self.n_classes)

    def cond_embedding(self, cond, n: int, device) -> Tensor:
        if self.text_dim:
            if cond is None:
                return self.text_embed(self.null_text.expand(n, -1))
            if not isinstance(cond, dict) or "text_embeds" not in cond:
                raise TypeError("this UNet is text-conditioned: cond must be a dict with 'text_embeds'")
            return self.text_embed(cond["text_embeds"])
        if cond is None:
            cond = torch.full((n,), self.n_classes, dtype=torch.long, device=device)
        return self.class_embed(cond)

    def network(self, x_in: Tensor, c_noise: Tensor, cond=None) -> Tensor:
        emb = self.noise_embed(c_noise) + self.cond_embedding(cond, x_in.shape[0], x_in.device)
        return self.net(x_in, F.silu(emb))


class OneStepGenerator(nn.Module):
    """g(z, c) = D(z, t_init, c): a denoiser evaluated once at a fixed noise level.

    Initialised from the reference network this is the Diff-Instruct / SiD generator (t_init near
    the top of the schedule: the reference's one-step guess, then trained); with t_init = t_max and
    matched-noise regression onto the teacher it is the paper's toy initialisation. ``z`` is a
    unit Gaussian, the same noise the multi-step teacher starts from on a VP schedule.
    """

    def __init__(self, denoiser: Denoiser, t_init: float):
        super().__init__()
        self.denoiser, self.t_init = denoiser, float(t_init)

    def forward(self, z: Tensor, cond=None) -> Tensor:
        return self.denoiser(z, torch.full((z.shape[0],), self.t_init, device=z.device), cond)
