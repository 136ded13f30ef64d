import pytest
import torch
from diffusers import AutoencoderKLWan

from diffusers_infvsr import CausalWanTransformer3DModel


TINY_TRANSFORMER_CONFIG = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}

TINY_VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.1, -0.2, 0.3, 0.0],
    "latents_std": [1.5, 0.7, 1.2, 2.0],
}


@pytest.fixture
def tiny_transformer() -> CausalWanTransformer3DModel:
    torch.manual_seed(0)
    return CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()


@pytest.fixture
def tiny_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_VAE_CONFIG).eval()


def smooth_video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, frames, height, width) video in [-1, 1] with image-like (spatially smooth) content."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3 * frames, max(2, height // 8), max(2, width // 8), generator=generator) * 2 - 1
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return fine.view(1, 3, frames, height, width).clamp(-1, 1)
