"""Stable Diffusion 3 (``SD3Transformer2DModel``): an MMDiT on flow matching, fed the scheduler's
timestep 1000 t, predicting eps - x_0."""

from __future__ import annotations

from didr.diffusion.denoiser import FlowDenoiser
from didr.models.backbones.base import DiffusersCall, Family, flow_schedule


class SD3Denoiser(DiffusersCall, FlowDenoiser):
    """SD3's MMDiT: fed the scheduler's timestep 1000 t (``time_scale``), predicts eps - x_0."""

    def call_backbone(self, x_t, t, cond):
        return self.net(
            hidden_states=x_t,
            timestep=self.schedule.model_time(t).to(x_t.dtype),
            encoder_hidden_states=cond["encoder_hidden_states"].to(x_t.dtype),
            pooled_projections=cond["pooled_projections"].to(x_t.dtype),
            return_dict=False,
        )[0]


SD3_FAMILY = Family("sd3", lambda net, schedule, prediction_type="flow": SD3Denoiser(net, schedule), lambda s: flow_schedule(s, time_scale=1000.0))
