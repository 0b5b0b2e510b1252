"""Builders for tiny, complete FLUX pipelines made of the real diffusers/transformers classes.

Used by make_default_model.py (the embedded default, models/tiny-flux) and generate_pipeline.py
(the end-to-end golden fixtures). The tokenizers are the ones in models/tiny-flux/tokenizer and
tokenizer_2 (made by make_tokenizer_assets.py): a rank-truncated copy of OpenAI CLIP's BPE and a
small SentencePiece unigram model with T5's special ids.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS = REPO / "models" / "tiny-flux"

CLIP_HIDDEN = 32
T5_DMODEL = 48

DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                     max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                         max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter so no path is an identity or a zero.

    Matrices N(0, (0.8/sqrt(fan_in))^2) (convolutions: fan_in = in_channels * kh * kw), biases
    N(0, 0.1^2), norm weights 1 + N(0, 0.2^2); embedding tables N(0, 1).
    """
    for name, p in model.named_parameters():
        if "embedding" in name or name.endswith("shared.weight") or name.endswith("embed_tokens.weight"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / math.sqrt(fan_in)))
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        else:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)


def build_pipeline(dev: bool, seed: int, num_layers: int = 2, num_single_layers: int = 3) -> FluxPipeline:
    """A dev-like (guidance embedding, dynamic shift) or schnell-like tiny FluxPipeline, float32."""
    gen = torch.Generator().manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZERS / "tokenizer")
    tokenizer_2 = T5TokenizerFast.from_pretrained(TOKENIZERS / "tokenizer_2")
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_HIDDEN, intermediate_size=64, num_attention_heads=2,
        num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=CLIP_HIDDEN, bos_token_id=0, eos_token_id=2, pad_token_id=1))  # FLUX's legacy ids
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=T5_DMODEL, d_kv=12, num_heads=4, d_ff=64, num_layers=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
        tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, act_fn="silu", sample_size=64, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=T5_DMODEL,
        pooled_projection_dim=CLIP_HIDDEN, guidance_embeds=dev, axes_dims_rope=[8, 12, 12])
    for m in (clip, t5, vae, transformer):
        randomise(m, gen)
        m.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**(DEV_SCHEDULER if dev else SCHNELL_SCHEDULER))
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer)


def save_pipeline(pipe: FluxPipeline, out: Path, dtype: torch.dtype) -> None:
    """save_pretrained with every model component stored in `dtype` (torch.nn.Module.to: diffusers'
    override warns about an empty list of float32 modules).

    transformers 5 saves tokenizers as tokenizer.json only; the real FLUX repositories ship
    vocab.json + merges.txt and spiece.model, so the canonical tokenizer folders are copied over."""
    for name in ("text_encoder", "text_encoder_2", "vae", "transformer"):
        torch.nn.Module.to(getattr(pipe, name), dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(out / name)
        shutil.copytree(TOKENIZERS / name, out / name)


def load_pipeline_f32(path: Path) -> FluxPipeline:
    return FluxPipeline.from_pretrained(path, torch_dtype=torch.float32)
