"""The diffusers adapters against the backbones' own schedulers and pipelines' conventions: the
denoised estimate (M2) and one sampler step agree on the same inputs."""

import pytest
import torch

from didr.diffusion.denoiser import GuidedDenoiser
from didr.diffusion.losses import dsm_loss
from didr.diffusion.samplers import ddim_step, flow_euler_sample, flow_euler_step
from didr.diffusion.schedules import FlowMatchingSchedule, VPDiscreteSchedule
from didr.models.backbones import make_denoiser, schedule_from_scheduler
from didr.models.generators import StepGenerator, generator_times
from didr.testing import tiny

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_unet_matches_ddim_scheduler(prediction):
    """x0_hat and one DDIM step equal DDIMScheduler.step on the UNet's own output."""
    torch.manual_seed(0)
    unet = tiny.tiny_sdxl_unet().eval()
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction, set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(10)
    n, prev = int(sched.timesteps[5]), int(sched.timesteps[6])
    gen = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 4, 8, 8, generator=gen), tiny.tiny_sdxl_cond(2, gen)
    with torch.no_grad():
        out = unet(x, n, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs={k: cond[k] for k in ("text_embeds", "time_ids")}).sample
        ref = sched.step(out, n, x)
        den = make_denoiser(unet, schedule_from_scheduler(sched, "unet"), "unet", prediction)
        t, t_next = den.schedule.t_from_timestep(n), den.schedule.t_from_timestep(prev)
        x_next, x0 = ddim_step(den, x, t, t_next, cond)
    torch.testing.assert_close(x0, ref.pred_original_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_next, ref.prev_sample, rtol=1e-4, atol=1e-4)


def test_zimage_matches_pipeline_convention_and_euler_scheduler():
    """The transformer fed (1000 - timestep) / 1000, its output negated, then FlowMatchEuler's step
    (pipeline_z_image.py) equals our flow Euler step with the ZImageDenoiser."""
    torch.manual_seed(0)
    net = tiny.tiny_zimage_transformer().eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    i = 1
    timestep, sigma, sigma_next = sched.timesteps[i], sched.sigmas[i], sched.sigmas[i + 1]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    caps = [torch.randn(5, 32, generator=gen), torch.randn(3, 32, generator=gen)]
    with torch.no_grad():
        out = net(list(x.unsqueeze(2).unbind(0)), ((1000 - timestep) / 1000).expand(2), caps, return_dict=False)[0]
        velocity = -torch.stack(out).squeeze(2)
        sched.set_begin_index(i)
        expected = sched.step(velocity, timestep, x).prev_sample
        den = make_denoiser(net, schedule_from_scheduler(sched, "zimage"), "zimage")
        x0 = den(x, sigma.expand(2), {"cap_feats": caps})
        got = flow_euler_step(den, x, sigma, sigma_next, {"cap_feats": caps})
    torch.testing.assert_close(x0, x - sigma * velocity, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert den.schedule.shift == 3.0


def test_sd3_matches_euler_scheduler():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    cond = {"encoder_hidden_states": torch.randn(2, 6, 32, generator=gen), "pooled_projections": torch.randn(2, 32, generator=gen)}
    with torch.no_grad():
        out = net(hidden_states=x, timestep=sched.timesteps[0].expand(2), encoder_hidden_states=cond["encoder_hidden_states"],
                  pooled_projections=cond["pooled_projections"]).sample
        expected = sched.step(out, sched.timesteps[0], x).prev_sample
        den = make_denoiser(net, schedule_from_scheduler(sched, "sd3"), "sd3")
        got = flow_euler_step(den, x, sched.sigmas[0], sched.sigmas[1], cond)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_flux_packing_matches_pipeline():
    """The Flux adapter's token packing and ids are FluxPipeline's own (_pack_latents, _prepare_latent_image_ids)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                 joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6]).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    cond = {"encoder_hidden_states": torch.randn(2, 6, 32, generator=gen), "pooled_projections": torch.randn(2, 32, generator=gen)}
    t = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        tokens = FluxPipeline._pack_latents(x, 2, 4, 8, 8)
        ids = FluxPipeline._prepare_latent_image_ids(2, 4, 4, x.device, x.dtype)
        out = net(hidden_states=tokens, timestep=t, guidance=None, pooled_projections=cond["pooled_projections"],
                  encoder_hidden_states=cond["encoder_hidden_states"], txt_ids=torch.zeros(6, 3), img_ids=ids).sample
        velocity = FluxPipeline._unpack_latents(out, 8, 8, 1)  # 8x8 latents, "pixels" at scale factor 1
        den = make_denoiser(net, FlowMatchingSchedule(), "flux")
        x0 = den(x, t, cond)
    torch.testing.assert_close(x0, x - 0.7 * velocity, rtol=1e-4, atol=1e-4)


def test_generator_steps_are_the_backbone_sampler():
    """A 1-step generator is D(z, t_gen); a 4-step one is flow Euler on ZImagePipeline's 4-step sigmas."""
    torch.manual_seed(0)
    net = tiny.tiny_zimage_transformer().eval()
    schedule = FlowMatchingSchedule(shift=3.0)
    den = make_denoiser(net, schedule, "zimage")
    times = generator_times(schedule, 1.0, 4)
    assert times == pytest.approx([1.0, 0.9, 0.75, 0.5])  # shift 3 applied to linspace(1, 1/4, 4)
    z, cond = torch.randn(2, 16, 8, 8), {"cap_feats": [torch.randn(4, 32)] * 2}
    with torch.no_grad():
        torch.testing.assert_close(StepGenerator(den, times).eval()(z, cond), flow_euler_sample(den, z, times + [0.0], cond))
        torch.testing.assert_close(StepGenerator(den, [1.0])(z, cond), den(z, torch.ones(2), cond))
    with pytest.raises(Exception, match="decreasing"):
        StepGenerator(den, [0.5, 0.9])


def test_ta_loss_is_the_backbones_training_loss():
    """The TA trains with eps-MSE on the SDXL UNet (DMD2's fake-score loss) and with the
    flow-velocity MSE on Z-Image, the losses these backbones were trained with; x0 weighting 1
    would weigh t = 0.02 by s^2 / a^2 ~ 0.02 in eps units."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    unet = tiny.tiny_sdxl_unet().eval()
    den = make_denoiser(unet, VPDiscreteSchedule(), "unet")
    x0, eps, cond, t = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen), tiny.tiny_sdxl_cond(2, gen), torch.tensor([0.02, 0.9])
    x_t = den.schedule.add_noise(x0, t, eps)
    with torch.no_grad():
        out = unet(x_t, den.schedule.model_time(t), encoder_hidden_states=cond["encoder_hidden_states"],
                   added_cond_kwargs={k: cond[k] for k in ("text_embeds", "time_ids")}).sample
        torch.testing.assert_close(dsm_loss(den, x0, t, cond, noise=eps), ((out - eps) ** 2).mean((1, 2, 3)), rtol=1e-4, atol=1e-5)

    net = tiny.tiny_zimage_transformer().eval()
    den = make_denoiser(net, FlowMatchingSchedule(shift=3.0), "zimage")
    x0, eps = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 16, 8, 8, generator=gen)
    caps = [torch.randn(5, 32, generator=gen), torch.randn(3, 32, generator=gen)]
    x_t = den.schedule.add_noise(x0, t, eps)
    with torch.no_grad():
        out = torch.stack(net(list(x_t.unsqueeze(2).unbind(0)), 1.0 - t, caps, return_dict=False)[0]).squeeze(2)
        velocity = eps - x0  # Z-Image predicts its negative
        torch.testing.assert_close(dsm_loss(den, x0, t, {"cap_feats": caps}, noise=eps), ((-out - velocity) ** 2).mean((1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_zimage_guidance_is_the_pipelines_cfg():
    """(M4) with w = 1 + g on the ZImageDenoiser is ZImagePipeline's pos + g (pos - neg) on the velocity."""
    torch.manual_seed(0)
    net = tiny.tiny_zimage_transformer().eval()
    den = make_denoiser(net, FlowMatchingSchedule(shift=3.0), "zimage")
    gen = torch.Generator().manual_seed(6)
    x, sigma, g = torch.randn(2, 16, 8, 8, generator=gen), torch.tensor([0.8, 0.8]), 4.0
    pos = {"cap_feats": [torch.randn(5, 32, generator=gen), torch.randn(3, 32, generator=gen)]}
    neg = {"cap_feats": [torch.randn(2, 32, generator=gen)] * 2}
    with torch.no_grad():
        guided = GuidedDenoiser(den, 1 + g, lambda c: neg)(x, sigma, pos)
        outs = [torch.stack(net(list(x.unsqueeze(2).unbind(0)), 1 - sigma, c["cap_feats"], return_dict=False)[0]).squeeze(2) for c in (pos, neg)]
        velocity = -(outs[0] + g * (outs[0] - outs[1]))
    torch.testing.assert_close(guided, x - 0.8 * velocity, rtol=1e-4, atol=1e-4)
