"""Tiny random text-to-image pipelines and reward models, built from configs and saved in the
real layouts, so the tiny presets and the tests load them through the same ``from_pretrained``
paths as real weights.

- :func:`save_tiny_sdxl`: a ``StableDiffusionXLPipeline`` folder (unet/, vae/, text_encoder/,
  text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/) with an SDXL-style ``text_time`` UNet.
- :func:`save_tiny_zimage`: a ``ZImagePipeline`` folder (transformer/, vae/, text_encoder/ (Qwen3),
  tokenizer/, scheduler/).
- :func:`save_tiny_sd`, :func:`save_tiny_sd3`, :func:`save_tiny_flux`, :func:`save_tiny_flux2`,
  :func:`save_tiny_qwenimage`: the other backbones' pipeline folders, each with tiny text encoders
  of its own kinds (CLIP, T5, Qwen3, Qwen2.5-VL) behind character-level tokenizers;
- :func:`save_tiny_clip`: a transformers CLIP folder that ``pickscore:FOLDER`` loads.

Sizes follow the configs measured to run in milliseconds on CPU; latents are 8x8, images 16x16.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

TEXT_WIDTH = 32
#: Qwen's chat format, without its tool and thinking branches
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_chars() -> list[str]:
    """CLIP's byte-to-character table, the base alphabet of its BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def save_char_tokenizer(folder: Path, max_length: int = 77) -> int:
    """A character-level CLIP tokenizer (BPE without merges); returns its vocabulary size."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length).save_pretrained(folder)
    return len(vocab)


def _clip_text_config(vocab: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    kw = dict(projection_dim=projection) if projection else {}
    return CLIPTextConfig(vocab_size=vocab, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, **kw)


def tiny_vae(latent_channels: int, flow: bool = False):
    """A two-level AutoencoderKL (8x spatial factor of the real VAEs becomes 2x)."""
    from diffusers import AutoencoderKL

    kw = dict(scaling_factor=0.3611, shift_factor=0.1159) if flow else dict(scaling_factor=0.13025)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=8, sample_size=16, **kw)


def tiny_sdxl_unet():
    """SDXL-style UNet: text_time added conditions, (1, 2) transformer layers, cross-attention 64 = 2 x 32."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=2 * TEXT_WIDTH, norm_num_groups=8,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH,
    )


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny random StableDiffusionXLPipeline folder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    vocab = save_char_tokenizer(folder / "_tok")
    tok = CLIPTokenizer.from_pretrained(folder / "_tok")
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(4), text_encoder=CLIPTextModel(_clip_text_config(vocab)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(vocab, TEXT_WIDTH)), tokenizer=tok, tokenizer_2=tok,
        unet=tiny_sdxl_unet(),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1),
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "_tok")
    return folder


def tiny_zimage_transformer():
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
                                    n_heads=2, n_kv_heads=2, qk_norm=True, cap_feat_dim=TEXT_WIDTH, axes_dims=[8, 12, 12], axes_lens=[1024, 512, 512])


def save_tiny_zimage(folder: Path, seed: int = 0) -> Path:
    """A tiny random ZImagePipeline folder (Qwen3 text encoder with a character-level tokenizer)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import CLIPTokenizer, Qwen3Config, Qwen3Model

    folder = Path(folder)
    save_char_tokenizer(folder / "_tok", max_length=512)
    torch.manual_seed(seed)
    text = Qwen3Model(Qwen3Config(vocab_size=1000, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=2, head_dim=16))
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tok")
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE  # ZImagePipeline wraps every prompt in it
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(16, flow=True), text_encoder=text,
                          tokenizer=tokenizer, transformer=tiny_zimage_transformer())
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "_tok")
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIP model with tokenizer and image processor (``pickscore:FOLDER``)."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    vocab = save_char_tokenizer(folder)
    text = _clip_text_config(vocab).to_dict()
    vision = dict(hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return folder


def _tokenizer(folder: Path, max_length: int = 77, chat: bool = False):
    from transformers import CLIPTokenizer

    save_char_tokenizer(folder / "_tok", max_length=max_length)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tok")
    if chat:
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _t5(width: int, vocab: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=width // 8)).eval()


def _save(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "_tok", ignore_errors=True)
    return folder


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny random StableDiffusionPipeline folder (SD 1.x / SD-Turbo layout: one CLIP, no text_time)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    tokenizer = _tokenizer(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                attention_head_dim=(2, 4), cross_attention_dim=TEXT_WIDTH, norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=tiny_vae(4), text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))).eval(), tokenizer=tokenizer,
                                   unet=unet, scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                                               timestep_spacing="trailing", steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return _save(pipe, folder)


def save_tiny_sd3(folder: Path, seed: int = 0) -> Path:
    """A tiny random StableDiffusion3Pipeline folder: two projected CLIPs and a T5, an MMDiT on 16-channel latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    folder = Path(folder)
    tokenizer = _tokenizer(folder)
    torch.manual_seed(seed)
    clips = [CLIPTextModelWithProjection(_clip_text_config(len(tokenizer), TEXT_WIDTH)).eval() for _ in range(2)]
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                        joint_attention_dim=2 * TEXT_WIDTH, caption_projection_dim=16, pooled_projection_dim=2 * TEXT_WIDTH, out_channels=16)
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(16, flow=True), text_encoder=clips[0],
                                    tokenizer=tokenizer, text_encoder_2=clips[1], tokenizer_2=tokenizer, text_encoder_3=_t5(2 * TEXT_WIDTH, len(tokenizer)),
                                    tokenizer_3=tokenizer, transformer=transformer)
    return _save(pipe, folder)


def save_tiny_flux(folder: Path, seed: int = 0, guidance_embeds: bool = False) -> Path:
    """A tiny random FluxPipeline folder: schnell's layout (no guidance input, fixed shift 1), or with
    ``guidance_embeds`` dev's (a guidance input, resolution-dependent shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    tokenizer = _tokenizer(folder)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    scheduler = (FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15) if guidance_embeds
                 else FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae(16, flow=True), text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))).eval(),
                        tokenizer=tokenizer, text_encoder_2=_t5(TEXT_WIDTH, len(tokenizer)), tokenizer_2=tokenizer, transformer=transformer)
    return _save(pipe, folder)


def save_tiny_flux2(folder: Path, seed: int = 0, distilled: bool = True) -> Path:
    """A tiny random Flux2KleinPipeline folder: a Qwen3 text encoder deep enough for the three hidden
    layers the pipeline stacks (9, 18, 27), a batch-norm VAE, latents patchified 2x2."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    tokenizer = _tokenizer(folder, max_length=512, chat=True)
    torch.manual_seed(seed)
    text = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
                                        num_key_value_heads=2, head_dim=8)).eval()
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                          joint_attention_dim=48, timestep_guidance_channels=256, mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                             layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=16)
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.1)
        vae.bn.running_var.uniform_(0.5, 2.0)
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True), vae=vae, text_encoder=text,
                              tokenizer=tokenizer, transformer=transformer, is_distilled=distilled)
    return _save(pipe, folder)


def save_tiny_qwenimage(folder: Path, seed: int = 0) -> Path:
    """A tiny random QwenImagePipeline folder: a Qwen2.5-VL text model, a one-frame Wan-style VAE."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    tokenizer = _tokenizer(folder, max_length=1024, chat=True)
    torch.manual_seed(seed)
    text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}, bos_token_id=None, eos_token_id=None),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_WIDTH))).eval()
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
                                              joint_attention_dim=TEXT_WIDTH, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False])
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True), vae=vae, text_encoder=text,
                             tokenizer=tokenizer, transformer=transformer)
    return _save(pipe, folder)


TINY_BUILDERS = {"sdxl": save_tiny_sdxl, "sd": save_tiny_sd, "zimage": save_tiny_zimage, "sd3": save_tiny_sd3, "flux": save_tiny_flux,
                 "flux2": save_tiny_flux2, "qwenimage": save_tiny_qwenimage}



def move_into_place(source: Path, folder: Path, done: str) -> Path:
    """Move the complete folder ``source`` to ``folder`` (a copy first when across file systems),
    ending in one rename, unless another process of the launch got there first."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / done).is_file():
        shutil.rmtree(source, ignore_errors=True)
        return folder
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.move(str(source), str(tmp))
    return _rename_into_place(tmp, folder, done)


def _rename_into_place(tmp: Path, folder: Path, done: str) -> Path:
    try:
        tmp.rename(folder)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / done).is_file():
            raise
    return folder


def build_once(folder: Path, build, done: str) -> Path:
    """``build(folder)`` unless ``folder/done`` exists. Each process builds into its own temporary
    folder and renames it into place, so processes of one launch that race here (torchrun,
    accelerate) never see a half-written model; the copies that lose the race are removed."""
    folder = Path(folder)
    if (folder / done).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    return _rename_into_place(tmp, folder, done)


def tiny_sdxl_cond(batch: int, generator: torch.Generator | None = None) -> dict:
    """Random conditioning for :func:`tiny_sdxl_unet`: text states, pooled embedding, 16 px time ids."""
    return {
        "encoder_hidden_states": torch.randn(batch, 7, 2 * TEXT_WIDTH, generator=generator),
        "text_embeds": torch.randn(batch, TEXT_WIDTH, generator=generator),
        "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).expand(batch, 6),
    }
