"""Synthetic checkpoints in the key layout of the original (non-diffusers) Wan2.1 release, for conversion tests."""

import torch


def original_wan_dit_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights named and shaped as in the original Wan2.1 DiT (`WanModel`) for a diffusers-style config."""
    generator = torch.Generator().manual_seed(seed)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    ffn_dim, text_dim, freq_dim = config["ffn_dim"], config["text_dim"], config["freq_dim"]
    in_channels, out_channels = config["in_channels"], config["out_channels"]
    shapes = {
        "patch_embedding.weight": (dim, in_channels, 1, 2, 2),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_channels * 4, dim),
        "head.head.bias": (out_channels * 4,),
        "head.modulation": (1, 2, dim),
    }
    for i in range(config["num_layers"]):
        for attention in ("self_attn", "cross_attn"):
            for projection in ("q", "k", "v", "o"):
                shapes[f"blocks.{i}.{attention}.{projection}.weight"] = (dim, dim)
                shapes[f"blocks.{i}.{attention}.{projection}.bias"] = (dim,)
            shapes[f"blocks.{i}.{attention}.norm_q.weight"] = (dim,)
            shapes[f"blocks.{i}.{attention}.norm_k.weight"] = (dim,)
        # In the original layout `norm3` is the affine LayerNorm before cross-attention.
        shapes[f"blocks.{i}.norm3.weight"] = (dim,)
        shapes[f"blocks.{i}.norm3.bias"] = (dim,)
        shapes[f"blocks.{i}.ffn.0.weight"] = (ffn_dim, dim)
        shapes[f"blocks.{i}.ffn.0.bias"] = (ffn_dim,)
        shapes[f"blocks.{i}.ffn.2.weight"] = (dim, ffn_dim)
        shapes[f"blocks.{i}.ffn.2.bias"] = (dim,)
        shapes[f"blocks.{i}.modulation"] = (1, 6, dim)
    return {key: torch.randn(shape, generator=generator) * 0.2 for key, shape in shapes.items()}
