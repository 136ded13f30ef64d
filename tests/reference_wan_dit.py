"""
Independent plain-torch forward of the original Wan2.1 DiT (`WanModel`, text-to-video), computed directly from a
state dict in the ORIGINAL key layout (see `original_layouts.original_wan_dit_state_dict`).

Nothing here goes through diffusers or this package: attention is an explicit softmax, RoPE rotates channel pairs as
complex numbers, and everything runs in float64. It exists to check the conversion and the causal modes of
`CausalWanTransformer3DModel` against the architecture they claim to reproduce.
"""

import math

import torch
import torch.nn.functional as F


EPS = 1e-6
ROPE_THETA = 10000.0
PATCH_SIZE = (1, 2, 2)


def _linear(state_dict, prefix, x):
    return F.linear(x, state_dict[f"{prefix}.weight"], state_dict[f"{prefix}.bias"])


def _layer_norm(x, weight=None, bias=None):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)


def _rms_norm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def sinusoidal_embedding(freq_dim, timestep):
    """[cos, sin] of timestep * 10000^(-k / half), k < half = freq_dim // 2, in float64."""
    half = freq_dim // 2
    frequencies = torch.pow(ROPE_THETA, -torch.arange(half, dtype=torch.float64) / half)
    angles = timestep.to(torch.float64)[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _rope_frequencies(positions, channels):
    """Complex unit phases (len(positions), channels // 2) of one RoPE part with `channels` real channels."""
    inverse = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, channels, 2, dtype=torch.float64) / channels)
    angles = positions.to(torch.float64)[:, None] * inverse[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def rope_phases(head_dim, frames, height, width, frame_offset=0):
    """Complex phases (frames * height * width, head_dim // 2) of Wan's 3D RoPE, token order (frame, row, column)."""
    h_channels = w_channels = 2 * (head_dim // 6)
    t_channels = head_dim - h_channels - w_channels
    t_phase = _rope_frequencies(torch.arange(frames) + frame_offset, t_channels)
    h_phase = _rope_frequencies(torch.arange(height), h_channels)
    w_phase = _rope_frequencies(torch.arange(width), w_channels)
    phases = torch.cat(
        [
            t_phase[:, None, None, :].expand(frames, height, width, -1),
            h_phase[None, :, None, :].expand(frames, height, width, -1),
            w_phase[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    )
    return phases.reshape(frames * height * width, head_dim // 2)


def apply_rope(x, phases):
    """x: (batch, tokens, heads, head_dim) real; consecutive channel pairs are (real, imaginary) parts."""
    as_complex = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2).contiguous())
    rotated = as_complex * phases[None, :, None, :]
    return torch.view_as_real(rotated).flatten(-2)


def attention(q, k, v, mask=None):
    """Explicit softmax attention; q, k, v: (batch, tokens, heads, head_dim); mask: (q_tokens, k_tokens), True = attend."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[None, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v).flatten(2)


def _self_attention(sd, prefix, x, heads, phases, mask):
    batch, tokens, dim = x.shape
    q = _rms_norm(_linear(sd, f"{prefix}.q", x), sd[f"{prefix}.norm_q.weight"]).view(batch, tokens, heads, -1)
    k = _rms_norm(_linear(sd, f"{prefix}.k", x), sd[f"{prefix}.norm_k.weight"]).view(batch, tokens, heads, -1)
    v = _linear(sd, f"{prefix}.v", x).view(batch, tokens, heads, -1)
    out = attention(apply_rope(q, phases), apply_rope(k, phases), v, mask)
    return _linear(sd, f"{prefix}.o", out)


def _cross_attention(sd, prefix, x, context, heads):
    batch = x.shape[0]
    q = _rms_norm(_linear(sd, f"{prefix}.q", x), sd[f"{prefix}.norm_q.weight"]).view(batch, x.shape[1], heads, -1)
    k = _rms_norm(_linear(sd, f"{prefix}.k", context), sd[f"{prefix}.norm_k.weight"])
    v = _linear(sd, f"{prefix}.v", context)
    k = k.view(batch, context.shape[1], heads, -1)
    v = v.view(batch, context.shape[1], heads, -1)
    return _linear(sd, f"{prefix}.o", attention(q, k, v))


def reference_wan_forward(state_dict, config, latents, timestep, context, frame_offset=0, attention_mask=None):
    """
    Forward of the original Wan2.1 T2V DiT.

    Args:
        state_dict: original-layout weights (`patch_embedding.*`, `blocks.N.*`, `head.*`, ...).
        config: diffusers-style kwargs (`num_attention_heads`, `attention_head_dim`, `num_layers`, `freq_dim`, ...).
        latents: (batch, in_channels, frames, height, width).
        timestep: (batch,).
        context: (batch, context_tokens, text_dim), used as given (no padding).
        frame_offset: temporal RoPE index of the first latent frame.
        attention_mask: optional boolean (tokens, tokens) self-attention mask, True = attend.

    Returns:
        (batch, out_channels, frames, height, width) float64 prediction.
    """
    sd = {key: value.to(torch.float64) for key, value in state_dict.items()}
    heads = config["num_attention_heads"]
    head_dim = config["attention_head_dim"]
    dim = heads * head_dim
    p_t, p_h, p_w = PATCH_SIZE
    latents = latents.to(torch.float64)
    batch = latents.shape[0]

    # Patchify: Conv3d with kernel = stride = patch; tokens ordered (frame, row, column).
    x = F.conv3d(latents, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=PATCH_SIZE)
    frames, height, width = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    if attention_mask is not None and attention_mask.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"attention_mask must be {(x.shape[1], x.shape[1])}, got {tuple(attention_mask.shape)}")
    phases = rope_phases(head_dim, frames, height, width, frame_offset)

    # Time: sinusoid -> Linear, SiLU, Linear; projection: SiLU, Linear to 6 * dim.
    t = sinusoidal_embedding(config["freq_dim"], timestep)
    e = _linear(sd, "time_embedding.2", F.silu(_linear(sd, "time_embedding.0", t)))
    e0 = _linear(sd, "time_projection.1", F.silu(e)).view(batch, 6, dim)

    # Text: Linear, GELU(tanh), Linear.
    ctx = context.to(torch.float64)
    ctx = _linear(sd, "text_embedding.2", F.gelu(_linear(sd, "text_embedding.0", ctx), approximate="tanh"))

    for i in range(config["num_layers"]):
        p = f"blocks.{i}"
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (sd[f"{p}.modulation"] + e0).chunk(6, dim=1)
        y = _layer_norm(x) * (1 + scale_sa) + shift_sa
        x = x + _self_attention(sd, f"{p}.self_attn", y, heads, phases, attention_mask) * gate_sa
        y = _layer_norm(x, sd[f"{p}.norm3.weight"], sd[f"{p}.norm3.bias"])
        x = x + _cross_attention(sd, f"{p}.cross_attn", y, ctx, heads)
        y = _layer_norm(x) * (1 + scale_ff) + shift_ff
        y = _linear(sd, f"{p}.ffn.2", F.gelu(_linear(sd, f"{p}.ffn.0", y), approximate="tanh"))
        x = x + y * gate_ff

    shift, scale = (sd["head.modulation"] + e[:, None, :]).chunk(2, dim=1)
    x = _linear(sd, "head.head", _layer_norm(x) * (1 + scale) + shift)

    # Unpatchify: each token's outputs are laid out (p_t, p_h, p_w, channels).
    x = x.view(batch, frames, height, width, p_t, p_h, p_w, -1)
    x = torch.einsum("bfhwpqrc->bcfphqwr", x)
    return x.reshape(batch, x.shape[1], frames * p_t, height * p_h, width * p_w)
