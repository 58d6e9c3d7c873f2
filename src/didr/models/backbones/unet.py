"""The UNet family: Stable Diffusion 1.x/2.x and SDXL (``UNet2DConditionModel``), on the discrete DDPM
schedule, eps-, v- or x0-prediction; SDXL's ``text_time`` added conditions ride in the conditioning
dict. DMD2's one-step SDXL UNet runs at its fixed timestep 399 (t = 0.4), SD-Turbo and SDXL-Turbo
at 999 (t = 1)."""

from __future__ import annotations

from didr.diffusion.denoiser import EpsDenoiser, VDenoiser, X0Denoiser
from didr.diffusion.schedules import NoiseSchedule, VPDiscreteSchedule
from didr.errors import ConfigError
from didr.models.backbones.base import Backbone, DiffusersCall, Family, vae_factor
from didr.models.text import ClipTextEncoder, sdxl_time_ids


class UNetCall(DiffusersCall):
    """``UNet2DConditionModel(x, timestep, encoder_hidden_states, added_cond_kwargs)``."""

    def call_backbone(self, x_t, t, cond):
        added = {k: cond[k].to(x_t.dtype) for k in ("text_embeds", "time_ids") if k in cond}
        return self.net(
            x_t,
            self.schedule.model_time(t),
            encoder_hidden_states=cond["encoder_hidden_states"].to(x_t.dtype),
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]


class UNetEpsDenoiser(UNetCall, EpsDenoiser):
    pass


class UNetVDenoiser(UNetCall, VDenoiser):
    pass


class UNetX0Denoiser(UNetCall, X0Denoiser):
    pass


UNET_DENOISERS = {"epsilon": UNetEpsDenoiser, "v_prediction": UNetVDenoiser, "sample": UNetX0Denoiser}




def unet_denoiser(net, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
    if prediction_type not in UNET_DENOISERS:
        raise ConfigError(f"UNet prediction_type must be one of {', '.join(UNET_DENOISERS)}, got {prediction_type!r}")
    return UNET_DENOISERS[prediction_type](net, schedule)


UNET = Family("unet", unet_denoiser, lambda scheduler, tokens=0, steps=0: VPDiscreteSchedule.from_diffusers(scheduler), flow=False)


def unet_call(cfg) -> dict:
    """No CFG when the generator samples (guidance 0), at the run's size."""
    return {"guidance_scale": 0.0, "height": cfg.resolution, "width": cfg.resolution}


def sd_text_encoder(load, cfg, device, dtype):
    from transformers import AutoTokenizer, CLIPTextModel

    return ClipTextEncoder([load(AutoTokenizer, "tokenizer")], [load(CLIPTextModel, "text_encoder").eval().to(device)], penultimate=False)


def sdxl_text_encoder(load, cfg, device, dtype):
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    toks = [load(AutoTokenizer, "tokenizer"), load(AutoTokenizer, "tokenizer_2")]
    encs = [load(CLIPTextModel, "text_encoder").eval().to(device), load(CLIPTextModelWithProjection, "text_encoder_2").eval().to(device)]
    return ClipTextEncoder(toks, encs)


def check_unet(kind: str):
    """The UNet's text conditioning against the text encoders: cross-attention width, and SDXL's
    ``text_time`` projection (6 time ids and the pooled embedding)."""

    def check(cfg, name: str, c, row: dict) -> None:
        has_tt = c.addition_embed_type == "text_time"
        if kind == "sdxl" and not has_tt:
            raise ConfigError(f"backbone.kind: sdxl needs a UNet with text_time added conditions; the {name} UNet has "
                              f"addition_embed_type={c.addition_embed_type!r} (use kind: sd)")
        if kind == "sd" and has_tt:
            raise ConfigError(f"backbone.kind: the {name} UNet expects SDXL's text_time conditions; use kind: sdxl")
        width = row["encoder_hidden_states"].shape[-1]
        if c.cross_attention_dim != width:
            raise ConfigError(f"backbone: the {name} UNet's cross_attention_dim is {c.cross_attention_dim}, the text encoders give {width}")
        if has_tt:
            want = 6 * c.addition_time_embed_dim + row["text_embeds"].shape[-1]
            if c.projection_class_embeddings_input_dim != want:
                raise ConfigError(f"backbone: the {name} UNet's text_time projection takes {c.projection_class_embeddings_input_dim} inputs, "
                                  f"the text encoders and time_ids give {want}")

    return check


#: the discrete timestep n is t = (n + 1) / N: DMD2's timestep 399 is t = 0.4
UNET_PIPELINE = dict(family=UNET, network="unet", network_class="UNet2DConditionModel", times_argument="timesteps", call=unet_call,
                     latent_multiple=vae_factor, kohya_lora=True)
#: Stable Diffusion 1.x / 2.x (SD-Turbo): the pipeline's default guidance 7.5
SD = Backbone("sd", pipeline_class="StableDiffusionPipeline", cfg_scale=7.5, text_encoder=sd_text_encoder, check=check_unet("sd"), **UNET_PIPELINE)
#: SDXL (DMD2, SDXL-Turbo, SDXL-Lightning, Hyper-SD): DMD2's real-score guidance 8; every released SDXL zeroes the empty prompt's embedding
SDXL = Backbone("sdxl", pipeline_class="StableDiffusionXLPipeline", cfg_scale=8.0, text_encoder=sdxl_text_encoder, check=check_unet("sdxl"),
                shared_cond=lambda cfg: {"time_ids": sdxl_time_ids(cfg.resolution, cfg.resolution)}, zero_null_prompt=True, **UNET_PIPELINE)
