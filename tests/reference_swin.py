"""Independent plain-torch forward of RAM's Swin encoder + `image_proj`, read directly from original-layout weights.

Written from the original (Microsoft) Swin semantics, not from transformers' code:
- patch embedding: conv with kernel = stride = patch size, then LayerNorm;
- blocks: x + W-MSA(norm1(x)), then x + MLP(norm2(x)); odd blocks shift their windows by window // 2 (cyclic roll by
  -shift, masked attention between tokens of different regions, roll back), except in a stage whose resolution is
  <= window, which uses one window of the whole map and no shift;
- window attention: fused qkv Linear, q scaled by head_dim ** -0.5, + relative position bias, softmax;
- patch merging: concat(x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) -> LayerNorm -> Linear;
- final LayerNorm, average pool over tokens, output [pooled, tokens] -> image_proj.

DAPE's LoRA is applied as a separate low-rank path in the qkv projection (x W^T + b + scale * x A^T B^T on the Q and V
rows), never merged into the weights.
"""

import torch
import torch.nn.functional as F


LN_EPS = 1e-5


def lora_qkv(x: torch.Tensor, weight, bias, lora_A=None, lora_B=None, scale: float = 1 / 8) -> torch.Tensor:
    """Fused qkv projection with an unmerged loralib MergedLinear LoRA on the Q and V outputs."""
    out = x @ weight.t() + bias
    if lora_A is None:
        return out
    dim = weight.shape[1]
    rank = lora_A.shape[0] // 2
    low_q = x @ lora_A[:rank].t()  # (..., r)
    low_v = x @ lora_A[rank:].t()
    extra = torch.zeros_like(out)
    extra[..., :dim] = low_q @ lora_B[:dim].t()
    extra[..., 2 * dim :] = low_v @ lora_B[dim:].t()
    return out + scale * extra


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the ((2w-1)^2, heads) table, for token i = (yi, xi) attending to token j = (yj, xj)."""
    index = torch.empty(window * window, window * window, dtype=torch.long)
    for i in range(window * window):
        yi, xi = divmod(i, window)
        for j in range(window * window):
            yj, xj = divmod(j, window)
            index[i, j] = (yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)
    return index


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(num_windows, w*w, w*w) additive mask: -100 between tokens from different regions of the rolled map."""
    region = torch.zeros(height, width)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[rows, cols] = label
            label += 1
    windows = partition(region[None, :, :, None], window).reshape(-1, window * window)
    same = windows[:, :, None] == windows[:, None, :]
    return torch.where(same, 0.0, -100.0)


def partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, w, w, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def unpartition(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def swin_block(x, sd, prefix, lora, scale, resolution, window, shift, heads):
    b, n, c = x.shape
    h = w = resolution
    if resolution <= window:
        window, shift = resolution, 0
    shortcut = x
    x = F.layer_norm(x, (c,), sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"], LN_EPS).reshape(b, h, w, c)
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    tokens = partition(x, window).reshape(-1, window * window, c)

    lora_A = lora_B = None
    if lora is not None:
        lora_A, lora_B = lora[prefix + "attn.qkv.lora_A"], lora[prefix + "attn.qkv.lora_B"]
    qkv = lora_qkv(tokens, sd[prefix + "attn.qkv.weight"], sd[prefix + "attn.qkv.bias"], lora_A, lora_B, scale)
    head_dim = c // heads
    qkv = qkv.reshape(-1, window * window, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1)
    table = sd[prefix + "attn.relative_position_bias_table"]
    scores = scores + table[relative_position_index(window)].permute(2, 0, 1)[None]
    if shift > 0:
        mask = shifted_window_mask(h, w, window, shift)  # (nW, N, N)
        num_windows = mask.shape[0]
        scores = scores.reshape(b, num_windows, heads, window * window, window * window) + mask[None, :, None]
        scores = scores.reshape(-1, heads, window * window, window * window)
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, window * window, c)
    attended = attended @ sd[prefix + "attn.proj.weight"].t() + sd[prefix + "attn.proj.bias"]
    x = unpartition(attended.reshape(-1, window, window, c), window, h, w)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + x.reshape(b, n, c)

    y = F.layer_norm(x, (c,), sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"], LN_EPS)
    y = F.gelu(y @ sd[prefix + "mlp.fc1.weight"].t() + sd[prefix + "mlp.fc1.bias"])
    y = y @ sd[prefix + "mlp.fc2.weight"].t() + sd[prefix + "mlp.fc2.bias"]
    return x + y


def patch_merging(x, sd, prefix, resolution):
    b, n, c = x.shape
    x = x.reshape(b, resolution, resolution, c)
    x0 = x[:, 0::2, 0::2]
    x1 = x[:, 1::2, 0::2]
    x2 = x[:, 0::2, 1::2]
    x3 = x[:, 1::2, 1::2]
    x = torch.cat([x0, x1, x2, x3], dim=-1).reshape(b, -1, 4 * c)
    x = F.layer_norm(x, (4 * c,), sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], LN_EPS)
    return x @ sd[prefix + "reduction.weight"].t()


def reference_dape_forward(
    pixel_values: torch.Tensor, ram: dict, dape: dict | None, config: dict, scale: float = 1 / 8
) -> torch.Tensor:
    """[pooled, patch tokens] of RAM's Swin (DAPE LoRA as a separate path) -> image_proj; (B, 1 + L, proj_dim)."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in ram.items()}
    lora = None if dape is None else {k: v.double() for k, v in dape.items()}
    x = pixel_values.double()
    patch, window = config["patch_size"], config["window_size"]
    x = F.conv2d(
        x, sd["visual_encoder.patch_embed.proj.weight"], sd["visual_encoder.patch_embed.proj.bias"], stride=patch
    )
    resolution = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    x = F.layer_norm(
        x,
        (x.shape[-1],),
        sd["visual_encoder.patch_embed.norm.weight"],
        sd["visual_encoder.patch_embed.norm.bias"],
        LN_EPS,
    )
    stages = len(config["depths"])
    for s, (depth, heads) in enumerate(zip(config["depths"], config["num_heads"])):
        for blk in range(depth):
            shift = 0 if blk % 2 == 0 else window // 2
            prefix = f"visual_encoder.layers.{s}.blocks.{blk}."
            x = swin_block(x, sd, prefix, lora, scale, resolution, window, shift, heads)
        if s < stages - 1:
            x = patch_merging(x, sd, f"visual_encoder.layers.{s}.downsample.", resolution)
            resolution //= 2
    x = F.layer_norm(x, (x.shape[-1],), sd["visual_encoder.norm.weight"], sd["visual_encoder.norm.bias"], LN_EPS)
    pooled = x.mean(dim=1, keepdim=True)
    tokens = torch.cat([pooled, x], dim=1)
    return tokens @ sd["image_proj.weight"].t() + sd["image_proj.bias"]
