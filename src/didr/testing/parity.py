"""Every backbone against its own stock diffusers pipeline, on tiny random weights, float32.

A :class:`ParityCase` names a backbone's tiny pipeline, the generator times its model cards use and
how its pipeline spells guidance. :class:`Parity` compares, from the same prompts and seed:

- one-step and few-step samples (both re-noising rules where the pipeline supports them) against
  the pipeline called with the scheduler and the ``call`` that didr exports;
- the reference's x0, without and with guidance (M4, and the pipeline's own renormalisation where
  it has one), against the pipeline's one-step prediction at the same time;

and so the text conditioning (didr's encoders on the same folder) and the VAE decode. The parity
tests assert each difference; ``benchmarks/backbone_parity.py`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from didr.models.backbones import backbone
from didr.models.pipeline import BackboneConfig
from didr.models.sample import Sampler
from didr.testing.tiny import TINY_BUILDERS

PROMPTS = ("a photo of a cat", "a red cup of coffee")  # a tuple: ZImagePipeline rewrites a prompt list in place


@dataclass(frozen=True)
class ParityCase:
    kind: str
    note: str  # which released models the times stand for
    builder_options: dict = field(default_factory=dict)
    one_step: tuple[float, ...] = (1.0,)
    few_step: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    guidance: float = 3.0  # (M4) weight w in the guided comparison
    x0_time: float = 0.6
    options: dict = field(default_factory=dict)  # BackboneConfig fields
    pipeline_guidance: Callable[[float], dict] = lambda w: {"guidance_scale": w}  # the pipeline's arguments for CFG of weight w
    guidance_input: bool = False  # guidance-distilled: the guidance is the network's input, not CFG


def true_cfg(w: float) -> dict:
    return {"true_cfg_scale": w, "negative_prompt": ""}


CASES = {
    "sdxl": ParityCase("sdxl", "DMD2's one-step UNet at timestep 399 and its 4 steps (999, 749, 499, 249); SDXL-Turbo at 999", one_step=(0.4,)),
    "sd": ParityCase("sd", "SD-Turbo's one step at timestep 999"),
    "zimage": ParityCase("zimage", "Z-Image-Turbo at 1 and 4 steps; guidance_scale g is (M4) with w = 1 + g, with cfg_normalization",
                         few_step=(1.0, 0.9, 0.75, 0.5), options={"cfg_normalization": 1.2},
                         pipeline_guidance=lambda w: {"guidance_scale": w - 1, "cfg_normalization": 1.2}),
    "sd3": ParityCase("sd3", "SD3.5-Large-Turbo's 4 steps"),
    "flux": ParityCase("flux", "FLUX.1-schnell at 1 and 4 steps; guidance is the pipeline's true CFG with a negative prompt", pipeline_guidance=true_cfg),
    "flux-dev": ParityCase("flux", "FLUX.1-dev: the guidance (5.0) is the network's input, no CFG", builder_options={"guidance_embeds": True},
                           options={"distilled_guidance": 5.0}, pipeline_guidance=lambda w: {"guidance_scale": 5.0}, guidance_input=True),
    "flux2": ParityCase("flux2", "FLUX.2 [klein] base with guidance; its shift depends on the step count", builder_options={"distilled": False}),
    "qwenimage": ParityCase("qwenimage", "Qwen-Image; its true CFG renormalises every token's guided velocity", pipeline_guidance=true_cfg),
}


class Parity:
    """didr's sampling of a tiny pipeline folder next to the stock pipeline's."""

    def __init__(self, case: ParityCase, folder: Path):
        self.case, self.folder = case, Path(folder)
        self.bb = backbone(case.kind)
        self.sampler = Sampler(self.config())

    @classmethod
    def build(cls, case: ParityCase, folder: Path) -> Parity:
        return cls(case, TINY_BUILDERS[case.kind](Path(folder), **case.builder_options))

    def config(self, **fields) -> BackboneConfig:
        return BackboneConfig(kind=self.case.kind, pretrained=str(self.folder), resolution=16, device="cpu", max_sequence_length=32,
                              **{**self.case.options, **fields})

    def stock(self, renoise: str):
        import diffusers

        pipe = diffusers.DiffusionPipeline.from_pretrained(self.folder)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = self.bb.sampling_scheduler(dict(pipe.scheduler.config), renoise)
        return pipe

    def stock_images(self, times, renoise: str, seed: int, **extra) -> Tensor:
        """The stock pipeline from ``generator=Generator().manual_seed(seed)``, called as didr exports it."""
        call = {**self.bb.pipeline_times(list(times), self.sampler.denoiser(len(times)).schedule), **self.bb.call(self.sampler.cfg), **extra}
        out = self.stock(renoise)(prompt=list(PROMPTS), generator=torch.Generator().manual_seed(seed), output_type="pt", **call)
        return out.images

    def images(self, latents: Tensor) -> Tensor:
        return ((self.sampler.decode(latents) + 1) / 2).clamp(0, 1)

    def samples(self, times, renoise: str, seed: int = 3) -> tuple[Tensor, Tensor]:
        """(didr's, the pipeline's) images of a generator with these times."""
        theirs = self.stock_images(times, renoise, seed)
        return self.images(self.sampler.sample(PROMPTS, list(times), renoise, seed=seed)), theirs

    def reference_x0(self, guided: bool, seed: int = 5) -> tuple[Tensor, Tensor]:
        """(didr's, the pipeline's) images of the reference's x0 at ``x0_time``, with or without guidance."""
        case = self.case
        w = case.guidance if guided else 1.0
        theirs = self.stock_images([case.x0_time], "ddim", seed, **(case.pipeline_guidance(w) if guided else {}))
        z, _ = self.sampler.noise(len(PROMPTS), seed=seed)
        t = torch.full((len(PROMPTS),), case.x0_time)
        with torch.no_grad():
            den = self.sampler.denoiser(1) if case.guidance_input else self.sampler.reference(w, steps=1)
            x0 = den(z, t, self.sampler.cond(PROMPTS))
        return self.images(x0), theirs

    def comparisons(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Every comparison of the case by name."""
        out = {}
        renoises = ("ddim",) if self.bb.family.flow else ("ddim", "fresh")  # flow pipelines draw scheduler noise off `generator`
        for renoise in renoises:
            out[f"1 step {list(self.case.one_step)} {renoise}"] = self.samples(self.case.one_step, renoise)
            out[f"{len(self.case.few_step)} steps {list(self.case.few_step)} {renoise}"] = self.samples(self.case.few_step, renoise)
        for guided in ((True,) if self.case.guidance_input else (False, True)):
            out["reference x0" + (" guided" if guided else "")] = self.reference_x0(guided)
        return out
