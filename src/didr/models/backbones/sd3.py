"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``): an MMDiT on flow matching, fed the
scheduler's timestep 1000 t, predicting eps - x_0. Its text conditioning is the stock pipeline's:
CLIP-L and CLIP-G penultimate states beside T5's, and their pooled projections. Guidance is (M4)
with w the pipeline's ``guidance_scale``; SD3.5-Large-Turbo samples in 4 steps without it."""

from __future__ import annotations

from didr.diffusion.denoiser import FlowDenoiser
from didr.errors import ConfigError
from didr.models.backbones.base import Backbone, DiffusersCall, Family, flow_schedule
from didr.models.text import PipelineTextEncoder


class SD3Denoiser(DiffusersCall, FlowDenoiser):
    """SD3's MMDiT: fed the scheduler's timestep 1000 t (``time_scale``), predicts eps - x0."""

    def call_backbone(self, x_t, t, cond):
        return self.net(
            hidden_states=x_t,
            timestep=self.schedule.model_time(t).to(x_t.dtype),
            encoder_hidden_states=cond["encoder_hidden_states"].to(x_t.dtype),
            pooled_projections=cond["pooled_projections"].to(x_t.dtype),
            return_dict=False,
        )[0]


def sd3_rows(pipe, prompts: list[str]) -> list[dict]:
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False,
                                              max_sequence_length=pipe.didr_max_sequence_length)
    return [{"encoder_hidden_states": e, "pooled_projections": p} for e, p in zip(embeds, pooled)]


def sd3_text_encoder(load, cfg, device, dtype):
    pipe = load(None, transformer=None, vae=None)
    pipe.didr_max_sequence_length = cfg.max_sequence_length
    return PipelineTextEncoder(pipe.to(device), sd3_rows)


def check_sd3(cfg, name: str, c, row: dict) -> None:
    for key, want in (("encoder_hidden_states", c.joint_attention_dim), ("pooled_projections", c.pooled_projection_dim)):
        if row[key].shape[-1] != want:
            raise ConfigError(f"backbone: the {name} transformer takes {key} of width {want}, the text encoders give {row[key].shape[-1]}")


def flow_call(cfg) -> dict:
    """No CFG (guidance 0), the run's text length and size."""
    return {"guidance_scale": 0.0, "max_sequence_length": cfg.max_sequence_length, "height": cfg.resolution, "width": cfg.resolution}


SD3_FAMILY = Family("sd3", lambda net, schedule, prediction_type="flow": SD3Denoiser(net, schedule),
                    lambda scheduler, tokens=4096, steps=28: flow_schedule(scheduler, tokens, steps, time_scale=1000.0))
#: SD3.5's model card guidance 3.5 (SD3 medium: 7); SD3.5-Large-Turbo: none
SD3 = Backbone("sd3", SD3_FAMILY, "transformer", "SD3Transformer2DModel", "StableDiffusion3Pipeline", 3.5, sd3_text_encoder, call=flow_call,
               check=check_sd3)
