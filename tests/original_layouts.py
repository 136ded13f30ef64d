"""Synthetic checkpoints in the key layouts of the original releases (Wan2.1 DiT and VAE, RAM, DAPE), for conversion tests."""

import math

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


def original_wan_vae_state_dict(base_dim: int = 8, z_dim: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """
    Random weights named and shaped as in the original Wan2.1 VAE (`WanVAE_`, the `Wan2.1_VAE.pth` layout), built
    from its architecture: dim_mult (1, 2, 4, 4), two residual blocks per encoder stage (three per decoder stage),
    temporal downsampling after encoder stages 1 and 2 (temporal upsampling after decoder stages 0 and 1), no
    attention outside the middle blocks.
    """
    generator = torch.Generator().manual_seed(seed)
    dim_mult, num_res_blocks, temporal_downsample = (1, 2, 4, 4), 2, (False, True, True)
    shapes = {}

    def conv3d(prefix, in_dim, out_dim, kernel):
        kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
        shapes[f"{prefix}.weight"] = (out_dim, in_dim, *kernel)
        shapes[f"{prefix}.bias"] = (out_dim,)

    def conv2d(prefix, in_dim, out_dim, kernel):
        shapes[f"{prefix}.weight"] = (out_dim, in_dim, kernel, kernel)
        shapes[f"{prefix}.bias"] = (out_dim,)

    def residual_block(prefix, in_dim, out_dim):
        # residual = (RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d)
        shapes[f"{prefix}.residual.0.gamma"] = (in_dim, 1, 1, 1)
        conv3d(f"{prefix}.residual.2", in_dim, out_dim, 3)
        shapes[f"{prefix}.residual.3.gamma"] = (out_dim, 1, 1, 1)
        conv3d(f"{prefix}.residual.6", out_dim, out_dim, 3)
        if in_dim != out_dim:
            conv3d(f"{prefix}.shortcut", in_dim, out_dim, 1)

    def attention_block(prefix, dim):
        shapes[f"{prefix}.norm.gamma"] = (dim, 1, 1)
        conv2d(f"{prefix}.to_qkv", dim, 3 * dim, 1)
        conv2d(f"{prefix}.proj", dim, dim, 1)

    def middle(prefix, dim):
        residual_block(f"{prefix}.0", dim, dim)
        attention_block(f"{prefix}.1", dim)
        residual_block(f"{prefix}.2", dim, dim)

    # Encoder: dims [d, d, 2d, 4d, 4d]; a Resample (ZeroPad2d, strided Conv2d [+ time_conv]) after all but the last stage.
    dims = [base_dim * m for m in (1, *dim_mult)]
    conv3d("encoder.conv1", 3, dims[0], 3)
    index = 0
    for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            residual_block(f"encoder.downsamples.{index}", in_dim, out_dim)
            in_dim, index = out_dim, index + 1
        if stage != len(dim_mult) - 1:
            conv2d(f"encoder.downsamples.{index}.resample.1", out_dim, out_dim, 3)
            if temporal_downsample[stage]:
                conv3d(f"encoder.downsamples.{index}.time_conv", out_dim, out_dim, (3, 1, 1))
            index += 1
    middle("encoder.middle", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv3d("encoder.head.2", dims[-1], 2 * z_dim, 3)
    conv3d("conv1", 2 * z_dim, 2 * z_dim, 1)
    conv3d("conv2", z_dim, z_dim, 1)

    # Decoder: dims [4d, 4d, 4d, 2d, d]; each upsample halves the channels, so stages 1..3 start at half width.
    dims = [base_dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    temporal_upsample = temporal_downsample[::-1]
    conv3d("decoder.conv1", z_dim, dims[0], 3)
    middle("decoder.middle", dims[0])
    index = 0
    for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if stage > 0:
            in_dim //= 2
        for _ in range(num_res_blocks + 1):
            residual_block(f"decoder.upsamples.{index}", in_dim, out_dim)
            in_dim, index = out_dim, index + 1
        if stage != len(dim_mult) - 1:
            # resample = (Upsample nearest-exact, Conv2d(C, C // 2, 3)); upsample3d adds time_conv C -> 2C.
            conv2d(f"decoder.upsamples.{index}.resample.1", out_dim, out_dim // 2, 3)
            if temporal_upsample[stage]:
                conv3d(f"decoder.upsamples.{index}.time_conv", out_dim, 2 * out_dim, (3, 1, 1))
            index += 1
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv3d("decoder.head.2", dims[-1], 3, 3)

    return {key: torch.randn(shape, generator=generator) * 0.2 for key, shape in shapes.items()}


def original_ram_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the original RAM layout (plus buffers and non-encoder keys that a converter must drop)."""
    generator = torch.Generator().manual_seed(seed)

    def linear(out_features, in_features):
        return torch.randn(out_features, in_features, generator=generator) / math.sqrt(in_features)

    def vector(size, center=0.0, spread=0.1):
        return center + spread * torch.randn(size, generator=generator)

    embed, patch, window = config["embed_dim"], config["patch_size"], config["window_size"]
    sd = {
        "visual_encoder.patch_embed.proj.weight": torch.randn(embed, 3, patch, patch, generator=generator)
        / math.sqrt(3 * patch * patch),
        "visual_encoder.patch_embed.proj.bias": vector(embed),
        "visual_encoder.patch_embed.norm.weight": vector(embed, 1.0),
        "visual_encoder.patch_embed.norm.bias": vector(embed),
    }
    stages = len(config["depths"])
    for s, (depth, heads) in enumerate(zip(config["depths"], config["num_heads"])):
        dim = embed * 2**s
        hidden = int(dim * config.get("mlp_ratio", 4.0))
        for b in range(depth):
            p = f"visual_encoder.layers.{s}.blocks.{b}."
            sd[p + "norm1.weight"] = vector(dim, 1.0)
            sd[p + "norm1.bias"] = vector(dim)
            sd[p + "attn.qkv.weight"] = linear(3 * dim, dim)
            sd[p + "attn.qkv.bias"] = vector(3 * dim)
            sd[p + "attn.proj.weight"] = linear(dim, dim)
            sd[p + "attn.proj.bias"] = vector(dim)
            sd[p + "attn.relative_position_bias_table"] = vector(((2 * window - 1) ** 2, heads), spread=1.0)
            # Buffers that exist in the original module tree (and in RAM's file) but are recomputed.
            sd[p + "attn.relative_position_index"] = torch.zeros(window**2, window**2, dtype=torch.long)
            if b % 2 == 1:
                sd[p + "attn_mask"] = torch.zeros(4, window**2, window**2)
            sd[p + "norm2.weight"] = vector(dim, 1.0)
            sd[p + "norm2.bias"] = vector(dim)
            sd[p + "mlp.fc1.weight"] = linear(hidden, dim)
            sd[p + "mlp.fc1.bias"] = vector(hidden)
            sd[p + "mlp.fc2.weight"] = linear(dim, hidden)
            sd[p + "mlp.fc2.bias"] = vector(dim)
        if s < stages - 1:
            p = f"visual_encoder.layers.{s}.downsample."
            sd[p + "norm.weight"] = vector(4 * dim, 1.0)
            sd[p + "norm.bias"] = vector(4 * dim)
            sd[p + "reduction.weight"] = linear(2 * dim, 4 * dim)
    num_features = embed * 2 ** (stages - 1)
    sd["visual_encoder.norm.weight"] = vector(num_features, 1.0)
    sd["visual_encoder.norm.bias"] = vector(num_features)
    sd["image_proj.weight"] = linear(config["projection_dim"], num_features)
    sd["image_proj.bias"] = vector(config["projection_dim"])
    # Other RAM parts that the converter must ignore.
    sd["label_embed"] = torch.zeros(5, 4)
    sd["tag_encoder.embeddings.word_embeddings.weight"] = torch.zeros(3, 4)
    return sd


def original_dape_lora_state_dict(config: dict, rank: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random DAPE LoRA in loralib `MergedLinear` layout (A: (2r, C) rows [Q; V], B: (2C, r) rows [Q; V])."""
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for s, depth in enumerate(config["depths"]):
        dim = config["embed_dim"] * 2**s
        for b in range(depth):
            p = f"visual_encoder.layers.{s}.blocks.{b}.attn.qkv."
            # Large enough that the 1/8-scaled update changes the output visibly.
            sd[p + "lora_A"] = torch.randn(2 * rank, dim, generator=generator) / math.sqrt(dim)
            sd[p + "lora_B"] = torch.randn(2 * dim, rank, generator=generator)
    # A LoRA of RAM's text side (outside the visual encoder) must be ignored.
    sd["tag_encoder.encoder.layer.0.attention.self.query.lora_A"] = torch.zeros(8, 4)
    return sd
