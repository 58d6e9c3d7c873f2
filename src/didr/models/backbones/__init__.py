"""Diffusers backbones under the one Denoiser interface (M2): one module per family.

A :class:`~didr.models.backbones.base.Family` is a kind of network with its denoiser adapter and
schedule; a :class:`~didr.models.backbones.base.Backbone` is a text-to-image pipeline built on one
(its folder layout, text encoders, stock pipeline class and default guidance). A new backbone is a
module here that defines both, and one line in each table below.

- ``sd``, ``sdxl``: SD 1.x / 2.x and SDXL, UNets on discrete schedules (:mod:`.unet`);
- ``zimage``: Z-Image (:mod:`.zimage`);
- ``sd3``: SD3 and SD3.5 (:mod:`.sd3`);
- ``flux``: FLUX.1 schnell and dev (:mod:`.flux`);
- ``flux2``: FLUX.2 [klein] (:mod:`.flux2`);
- ``qwenimage``: Qwen-Image (:mod:`.qwenimage`).

Conditioning is a dict of batched fields (see :mod:`didr.models.text`); the ``prompts`` entry is
for rewards and ignored by the networks. Latents are the backbone's own (scaled) latents.
"""

from __future__ import annotations

from torch import nn

from didr.diffusion.denoiser import NetworkDenoiser
from didr.diffusion.schedules import NoiseSchedule
from didr.errors import ConfigError
from didr.models.backbones.base import AUTOCAST_DTYPES, Backbone, Family
from didr.models.backbones.flux import FLUX, FLUX_FAMILY
from didr.models.backbones.flux2 import FLUX2, FLUX2_FAMILY
from didr.models.backbones.qwenimage import QWEN_FAMILY, QWENIMAGE
from didr.models.backbones.sd3 import SD3, SD3_FAMILY
from didr.models.backbones.unet import SD, SDXL, UNET, UNET_DENOISERS
from didr.models.backbones.zimage import ZIMAGE, ZIMAGE_FAMILY

FAMILIES: dict[str, Family] = {f.name: f for f in (UNET, ZIMAGE_FAMILY, SD3_FAMILY, FLUX_FAMILY, FLUX2_FAMILY, QWEN_FAMILY)}
BACKBONES: dict[str, Backbone] = {b.kind: b for b in (SDXL, SD, ZIMAGE, SD3, FLUX, FLUX2, QWENIMAGE)}
UNET_PREDICTIONS = tuple(UNET_DENOISERS)  # what a UNet may predict: epsilon, v_prediction, sample

__all__ = ["AUTOCAST_DTYPES", "BACKBONES", "FAMILIES", "UNET_PREDICTIONS", "Backbone", "Family", "backbone", "make_denoiser", "schedule_from_scheduler"]


def backbone(kind: str) -> Backbone:
    if kind not in BACKBONES:
        raise ConfigError(f"unknown backbone kind {kind!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[kind]


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown backbone network kind {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def schedule_from_scheduler(scheduler, family_name: str, tokens: int = 4096, steps: int = 50) -> NoiseSchedule:
    """The (M1) schedule of a diffusers scheduler for a network of ``family_name``, for images of
    ``tokens`` latent tokens sampled in ``steps`` steps (where the time shift depends on them)."""
    return family(family_name).schedule(scheduler, tokens, steps)


def make_denoiser(net: nn.Module, schedule: NoiseSchedule, family_name: str, prediction_type: str = "epsilon",
                  autocast_mode: str = "none") -> NetworkDenoiser:
    """The adapter of ``family_name`` (unet | zimage | sd3 | flux | flux2 | qwenimage) around a diffusers network."""
    den = family(family_name).denoiser(net, schedule, prediction_type)
    den.autocast_mode = autocast_mode
    return den
