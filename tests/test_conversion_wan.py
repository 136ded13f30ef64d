"""
Conversion of original-layout Wan2.1 checkpoints (DiT and VAE), checked against an independent plain-torch forward of
the original DiT (`reference_wan_dit.py`) and against the original VAE's architecture (`original_layouts.py`).
"""

import pytest
import torch
from conftest import TINY_TRANSFORMER_CONFIG
from original_layouts import original_wan_dit_state_dict, original_wan_vae_state_dict
from reference_wan_dit import reference_wan_forward

from diffusers_infvsr import CausalWanKVCache
from diffusers_infvsr.conversion import convert_transformer, convert_vae


# (dtype of the converted model, timestep, tolerance on the max abs difference to the float64 reference).
# float32 at t=400: measured 4e-6 .. 6e-6 (outputs up to ~5), mostly fp32 rounding plus diffusers' float32 timestep
#   sinusoid (8e-6 off the original's float64 one at t=400).
# float64 at t=0 (where a float32 sinusoid is exact): measured ~3e-7, left by diffusers' float32 RoPE tables. This
#   tighter check catches small mismatches (e.g. LayerNorm eps 1e-5 instead of 1e-6 shifts outputs by ~2e-5).
PRECISIONS = {"float32": (torch.float32, 400.0, 2e-5), "float64": (torch.float64, 0.0, 2e-6)}


def inputs(num_frames, height=4, width=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, TINY_TRANSFORMER_CONFIG["in_channels"], num_frames, height, width, generator=generator)
    context = torch.randn(1, 5, TINY_TRANSFORMER_CONFIG["text_dim"], generator=generator)
    return latents, context


# With head_dim 12 the three RoPE parts (t, h, w) all have 4 channels; head_dim 16 splits them 8 / 4 / 4, so a wrong
# split is visible too.
CONFIGS = {
    "head_dim_12": TINY_TRANSFORMER_CONFIG,
    "head_dim_16": {**TINY_TRANSFORMER_CONFIG, "attention_head_dim": 16},
}


@pytest.fixture(scope="module")
def original_dit():
    return original_wan_dit_state_dict(TINY_TRANSFORMER_CONFIG, seed=0)


@pytest.fixture(scope="module", params=list(CONFIGS))
def dit_config(request):
    config = CONFIGS[request.param]
    return config, original_wan_dit_state_dict(config, seed=0)


@pytest.fixture(scope="module", params=list(PRECISIONS))
def dit(request, dit_config):
    """(config, original state dict, converted model, dtype, timestep, tolerance)."""
    config, original = dit_config
    dtype, timestep, tolerance = PRECISIONS[request.param]
    model = convert_transformer(original, config, dtype=dtype)
    return config, original, model, dtype, torch.tensor([timestep]), tolerance


def block_banded_mask(chunk_frames, cache_frames, tokens_per_frame):
    """Query frames of chunk c see key frames max(0, start_c - cache_frames) .. end_c - 1; written with plain loops."""
    total_frames = sum(chunk_frames)
    frame_mask = torch.zeros(total_frames, total_frames, dtype=torch.bool)
    start = 0
    for frames in chunk_frames:
        end = start + frames
        for query_frame in range(start, end):
            for key_frame in range(max(0, start - cache_frames), end):
                frame_mask[query_frame, key_frame] = True
        start = end
    tokens = total_frames * tokens_per_frame
    mask = torch.zeros(tokens, tokens, dtype=torch.bool)
    for query_frame in range(total_frames):
        for key_frame in range(total_frames):
            if frame_mask[query_frame, key_frame]:
                rows = slice(query_frame * tokens_per_frame, (query_frame + 1) * tokens_per_frame)
                columns = slice(key_frame * tokens_per_frame, (key_frame + 1) * tokens_per_frame)
                mask[rows, columns] = True
    return mask


@torch.no_grad()
def test_converted_dit_full_attention_matches_reference(dit):
    config, original, model, dtype, timestep, tolerance = dit
    latents, context = inputs(num_frames=5)
    output = model(latents.to(dtype), timestep, context.to(dtype)).sample
    expected = reference_wan_forward(original, config, latents, timestep, context)

    assert output.shape == expected.shape == latents.shape
    assert output.dtype == dtype
    assert expected.abs().max() > 0.5  # a non-degenerate output
    assert (output.double() - expected).abs().max() <= tolerance


@torch.no_grad()
def test_converted_dit_streaming_matches_reference_with_block_banded_mask(dit):
    config, original, model, dtype, timestep, tolerance = dit
    chunk_frames, cache_frames, start_frame = [3, 3, 1], 3, 7
    latents, context = inputs(num_frames=sum(chunk_frames), seed=1)
    latents, context = latents.to(dtype), context.to(dtype)

    outputs, cache, start = [], CausalWanKVCache(cache_frames, start_frame=start_frame), 0
    for frames in chunk_frames:
        output = model(latents[:, :, start : start + frames], timestep, context, kv_cache=cache)
        outputs.append(output.sample)
        cache, start = output.kv_cache, start + frames
    streamed = torch.cat(outputs, dim=2).double()
    assert cache.next_frame == start_frame + sum(chunk_frames)

    tokens_per_frame = (4 // 2) * (6 // 2)
    mask = block_banded_mask(chunk_frames, cache_frames, tokens_per_frame)
    expected = reference_wan_forward(
        original,
        config,
        latents,
        timestep,
        context,
        frame_offset=start_frame,
        attention_mask=mask,
    )
    assert (streamed - expected).abs().max() <= tolerance

    # The block-causal full-sequence mode is the same computation in one call.
    block_causal = model(
        latents, timestep, context, chunk_frames=chunk_frames, cache_frames=cache_frames, frame_offset=start_frame
    ).sample.double()
    assert (block_causal - expected).abs().max() <= tolerance

    # The comparison is sensitive to the mask: unrestricted attention over the clip is clearly different.
    unmasked = reference_wan_forward(original, config, latents, timestep, context, frame_offset=start_frame)
    assert (streamed - unmasked).abs().max() > 1e-2


# The messages name the key after conversion to diffusers names; the patterns leave the surrounding wording free.
@pytest.mark.parametrize(
    "corrupt, pattern",
    [
        (lambda sd: sd.pop("blocks.1.cross_attn.k.weight"), r"missing .*'blocks\.1\.attn2\.to_k\.weight'"),
        (
            lambda sd: sd.update({"blocks.0.extra.weight": torch.zeros(3)}),
            r"unexpected .*'blocks\.0\.extra\.weight'",
        ),
        (
            lambda sd: sd.update({"head.head.weight": torch.zeros(8, 24)}),
            r"'proj_out\.weight'.* has shape \(8, 24\), expected \(16, 24\)",
        ),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_convert_transformer_refuses_bad_checkpoints(original_dit, corrupt, pattern):
    checkpoint = dict(original_dit)
    corrupt(checkpoint)
    with pytest.raises(ValueError, match=pattern):
        convert_transformer(checkpoint, TINY_TRANSFORMER_CONFIG)


VAE_BASE_DIM, VAE_Z_DIM = 8, 4
VAE_CONFIG = {
    "base_dim": VAE_BASE_DIM,
    "z_dim": VAE_Z_DIM,
    "latents_mean": [0.0] * VAE_Z_DIM,
    "latents_std": [1.0] * VAE_Z_DIM,
}


def test_convert_vae_loads_original_layout_strictly():
    original = original_wan_vae_state_dict(base_dim=VAE_BASE_DIM, z_dim=VAE_Z_DIM, seed=0)
    vae = convert_vae(original, config=VAE_CONFIG)
    converted = vae.state_dict()
    # Strict conversion: one converted tensor per original one, none left on the meta device.
    assert len(converted) == len(original)
    assert all(not tensor.is_meta for tensor in converted.values())

    placements = {
        "encoder.conv1.weight": "encoder.conv_in.weight",
        "encoder.downsamples.3.shortcut.weight": "encoder.down_blocks.3.conv_shortcut.weight",
        "encoder.downsamples.5.time_conv.weight": "encoder.down_blocks.5.time_conv.weight",
        "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
        "encoder.head.2.weight": "encoder.conv_out.weight",
        "conv1.weight": "quant_conv.weight",
        "conv2.weight": "post_quant_conv.weight",
        "decoder.upsamples.3.time_conv.weight": "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "decoder.upsamples.11.resample.1.weight": "decoder.up_blocks.2.upsamplers.0.resample.1.weight",
        "decoder.head.0.gamma": "decoder.norm_out.gamma",
    }
    for original_key, converted_key in placements.items():
        assert torch.equal(converted[converted_key], original[original_key]), (original_key, converted_key)

    decoded = vae.decode(torch.randn(1, VAE_Z_DIM, 2, 4, 4, generator=torch.Generator().manual_seed(0))).sample
    assert decoded.shape == (1, 3, 5, 32, 32) and torch.isfinite(decoded).all()


def test_convert_vae_refuses_wrong_shape():
    original = original_wan_vae_state_dict(base_dim=VAE_BASE_DIM, z_dim=VAE_Z_DIM, seed=0)
    original["decoder.upsamples.4.shortcut.weight"] = torch.zeros(32, 32, 1, 1, 1)
    pattern = r"'decoder\.up_blocks\.1\.resnets\.0\.conv_shortcut\.weight'.* has shape \(32, 32, 1, 1, 1\)"
    with pytest.raises(ValueError, match=pattern):
        convert_vae(original, config=VAE_CONFIG)
