"""Every backbone against its own stock diffusers pipeline, on tiny random weights, float32.

One test class, one subclass per backbone (the way diffusers tests every scheduler): a subclass
names its tiny pipeline, the generator times its model cards use, and how its pipeline spells
guidance. The class checks, from the same prompts and the same seed:

- one-step and few-step samples (both re-noising rules) against the pipeline called with the
  scheduler and the ``call`` that didr exports: the images agree to float32 rounding;
- the reference's x0, without and with guidance (M4, and the pipeline's own renormalisation where
  it has one), against the pipeline's one-step prediction at the same time;
- and so the text conditioning (didr's encoders on the same folder) and the VAE decode.
"""

from __future__ import annotations

import pytest
import torch

from didr.errors import ConfigError
from didr.models.backbones import backbone
from didr.models.pipeline import BackboneConfig
from didr.models.sample import Sampler
from didr.testing import tiny

diffusers = pytest.importorskip("diffusers")
PROMPTS = ("a photo of a cat", "a red cup of coffee")  # a tuple: ZImagePipeline rewrites a prompt list in place
ATOL = 2e-5  # images in [0, 1]; float32 rounding through a few networks


class BackboneParity:
    kind: str = ""
    builder_options: dict = {}
    resolution: int = 16
    one_step: list[float] = [1.0]
    few_step: list[float] = [1.0, 0.75, 0.5, 0.25]
    guidance: float = 3.0  # our (M4) weight w in the guided test
    x0_time: float = 0.6
    options: dict = {}  # BackboneConfig fields

    def pipeline_guidance(self, w: float) -> dict:
        """The pipeline's keyword arguments for CFG of weight w."""
        return {"guidance_scale": w}

    @pytest.fixture(scope="class")
    def folder(self, tmp_path_factory):
        return tiny.TINY_BUILDERS[self.kind](tmp_path_factory.mktemp(self.kind) / "pipe", **self.builder_options)

    @pytest.fixture(scope="class")
    def sampler(self, folder):
        return Sampler(self.config(folder))

    def config(self, folder, **fields) -> BackboneConfig:
        return BackboneConfig(kind=self.kind, pretrained=str(folder), resolution=self.resolution, device="cpu", max_sequence_length=32,
                              **{**self.options, **fields})

    def stock(self, folder, renoise: str):
        pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = backbone(self.kind).sampling_scheduler(dict(pipe.scheduler.config), renoise)
        return pipe

    def stock_images(self, folder, sampler, times, renoise, seed, **extra):
        """The stock pipeline from ``generator=Generator().manual_seed(seed)``, called as didr exports it."""
        bb, cfg = backbone(self.kind), sampler.cfg
        call = {**bb.pipeline_times(times, sampler.denoiser(len(times)).schedule), **bb.call(cfg), **extra}
        out = self.stock(folder, renoise)(prompt=list(PROMPTS), generator=torch.Generator().manual_seed(seed), output_type="pt", **call)
        return out.images

    @staticmethod
    def ours(sampler, latents):
        return ((sampler.decode(latents) + 1) / 2).clamp(0, 1)

    @pytest.mark.parametrize("renoise", ["ddim", "fresh"])
    def test_one_and_few_step_samples_are_the_pipelines(self, folder, sampler, renoise):
        if renoise == "fresh" and backbone(self.kind).family.flow:
            # the flow pipelines draw their scheduler's noise from the global stream, not from `generator`
            with pytest.raises(ConfigError, match="generator_renoise"):
                self.config(folder, generator_renoise="fresh").validate()
            return
        for times in (self.one_step, self.few_step):
            theirs = self.stock_images(folder, sampler, times, renoise, seed=3)
            ours = self.ours(sampler, sampler.sample(PROMPTS, times, renoise, seed=3))
            torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL, msg=lambda m, times=times: f"{self.kind} {times} {renoise}: {m}")

    @pytest.mark.parametrize("guided", [False, True])
    def test_the_reference_x0_is_the_pipelines_prediction(self, folder, sampler, guided):
        w = self.guidance if guided else 1.0
        extra = self.pipeline_guidance(w) if guided else {}
        theirs = self.stock_images(folder, sampler, [self.x0_time], "ddim", seed=5, **extra)
        z, _ = sampler.noise(len(PROMPTS), seed=5)
        with torch.no_grad():
            x0 = sampler.reference(w, steps=1)(z, torch.full((len(PROMPTS),), self.x0_time), sampler.cond(PROMPTS))
        torch.testing.assert_close(self.ours(sampler, x0), theirs, rtol=0, atol=ATOL)


class TestSDXL(BackboneParity):
    """DMD2's one-step UNet at timestep 399 and its 4 steps (999, 749, 499, 249); SDXL-Turbo at 999."""

    kind = "sdxl"
    one_step = [0.4]
    few_step = [1.0, 0.75, 0.5, 0.25]
    x0_time = 0.6


class TestSD(BackboneParity):
    """SD-Turbo's one step at timestep 999."""

    kind = "sd"


class TestZImage(BackboneParity):
    """Z-Image-Turbo at 1 and 4 steps; its guidance_scale g is (M4) with w = 1 + g, with cfg_normalization."""

    kind = "zimage"
    few_step = [1.0, 0.9, 0.75, 0.5]
    options = {"cfg_normalization": 1.2}

    def pipeline_guidance(self, w):
        return {"guidance_scale": w - 1, "cfg_normalization": 1.2}


class TestSD3(BackboneParity):
    """SD3.5-Large-Turbo's 4 steps."""

    kind = "sd3"


class TestFluxSchnell(BackboneParity):
    """FLUX.1-schnell at 1 and 4 steps; guidance is (M4) with the pipeline's true CFG and a negative prompt."""

    kind = "flux"

    def pipeline_guidance(self, w):
        return {"true_cfg_scale": w, "negative_prompt": ""}


class TestFluxDev(BackboneParity):
    """FLUX.1-dev: the guidance is the network's input; the test varies it (no CFG, no negative prompt)."""

    kind = "flux"
    builder_options = {"guidance_embeds": True}
    options = {"distilled_guidance": 5.0}

    def pipeline_guidance(self, w):
        return {"guidance_scale": 5.0}

    @pytest.mark.parametrize("guided", [True])
    def test_the_reference_x0_is_the_pipelines_prediction(self, folder, sampler, guided):
        theirs = self.stock_images(folder, sampler, [self.x0_time], "ddim", seed=5, guidance_scale=5.0)
        z, _ = sampler.noise(len(PROMPTS), seed=5)
        with torch.no_grad():
            x0 = sampler.denoiser(1)(z, torch.full((len(PROMPTS),), self.x0_time), sampler.cond(PROMPTS))
        torch.testing.assert_close(self.ours(sampler, x0), theirs, rtol=0, atol=ATOL)


class TestFlux2(BackboneParity):
    """FLUX.2 [klein] (the base, with guidance); its shift depends on the step count."""

    kind = "flux2"
    builder_options = {"distilled": False}
    resolution = 16


class TestQwenImage(BackboneParity):
    """Qwen-Image; its true CFG renormalises every token's guided velocity."""

    kind = "qwenimage"

    def pipeline_guidance(self, w):
        return {"true_cfg_scale": w, "negative_prompt": ""}
