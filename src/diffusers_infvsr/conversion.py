# Copyright 2026 The diffusers-infvsr authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Conversion of the official InfVSR release files into a diffusers `InfVSRPipeline` folder.

Inputs: `InfVSR.ckpt` (DiT, original Wan layout, text_dim 512), `Wan2.1_VAE.pth`, `ram_swin_large_14m.pth` (RAM's
Swin-L `visual_encoder.*` and `image_proj.*`) and `DAPE.pth` (LoRA for every `attn.qkv`, merged with scale 1/8).
"""

import inspect
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from .hub import default_model_card_path, render_model_card
from .models import CausalWanTransformer3DModel, DAPEImageEncoder
from .pipeline_infvsr import InfVSRPipeline
from .scheduling_infvsr import InfVSRScheduler


# Wan2.1 T2V 1.3B layout, with the 512-dim DAPE visual prompt in place of T5 text embeddings.
INFVSR_TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 512,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}

_CHECKPOINT_WRAPPERS = ("model", "state_dict", "model_state")


def load_original_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Load a released `.pth` / `.ckpt` safely (`weights_only=True`, memory-mapped) and unwrap a top-level `model`,
    `state_dict` or `model_state` entry if the tensors are stored under one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise ValueError(f"{path} is not a loadable PyTorch checkpoint (weights_only, zip format): {error}") from error
    for wrapper in _CHECKPOINT_WRAPPERS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors.")
    return checkpoint


def _load_converted(model_class, config: dict, state_dict: dict, source: str, dtype: torch.dtype | None):
    with init_empty_weights():
        model = model_class(**config)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    _check_keys(source, state_dict, expected, "Is this the right file for this model?")
    if dtype is not None:
        state_dict = {key: value.to(dtype) for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


# The DAPE LoRA is loralib's `MergedLinear(dim, 3 * dim, r=8, enable_lora=[True, False, True])` with lora_alpha=1.
DAPE_LORA_RANK = 8
DAPE_LORA_ALPHA = 1.0

_RAM_PREFIXES = ("visual_encoder.", "image_proj.")
_RAM_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")

# Parameters of one original Swin block (other than attn.qkv) and their name in transformers' `SwinLayer`.
_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def resolve_dape_config(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    r"""
    The full [`DAPEImageEncoder`] configuration: `config` (a dict or a model's `config`) on top of the defaults.

    Example:

    ```py
    >>> resolve_dape_config({"image_size": 64})["embed_dim"]
    192
    ```
    """
    parameters = inspect.signature(DAPEImageEncoder.__init__).parameters
    resolved = {name: p.default for name, p in parameters.items() if name != "self"}
    for name, value in dict(config or {}).items():
        if name in resolved:
            resolved[name] = value
        elif not name.startswith("_"):
            raise ValueError(f"Unknown `DAPEImageEncoder` config entry {name!r}; expected some of {sorted(resolved)}.")
    resolved["depths"] = [int(d) for d in resolved["depths"]]
    resolved["num_heads"] = [int(h) for h in resolved["num_heads"]]
    return resolved


def ram_key_shapes(config: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    r"""
    Every key, with its shape, that the original RAM checkpoint must provide for a [`DAPEImageEncoder`] of this
    configuration (only `visual_encoder.*` and `image_proj.*`, without the `relative_position_index` / `attn_mask`
    buffers).

    Example:

    ```py
    >>> ram_key_shapes()["visual_encoder.layers.3.blocks.1.attn.qkv.weight"]
    (4608, 1536)
    ```
    """
    config = resolve_dape_config(config)
    embed_dim, patch_size, window = config["embed_dim"], config["patch_size"], config["window_size"]
    num_stages = len(config["depths"])
    shapes = {
        "visual_encoder.patch_embed.proj.weight": (embed_dim, 3, patch_size, patch_size),
        "visual_encoder.patch_embed.proj.bias": (embed_dim,),
        "visual_encoder.patch_embed.norm.weight": (embed_dim,),
        "visual_encoder.patch_embed.norm.bias": (embed_dim,),
    }
    for stage, (depth, heads) in enumerate(zip(config["depths"], config["num_heads"])):
        dim = embed_dim * 2**stage
        hidden = int(dim * config["mlp_ratio"])
        for block in range(depth):
            prefix = f"visual_encoder.layers.{stage}.blocks.{block}."
            shapes.update(
                {
                    prefix + "norm1.weight": (dim,),
                    prefix + "norm1.bias": (dim,),
                    prefix + "attn.qkv.weight": (3 * dim, dim),
                    prefix + "attn.qkv.bias": (3 * dim,),
                    prefix + "attn.proj.weight": (dim, dim),
                    prefix + "attn.proj.bias": (dim,),
                    prefix + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                    prefix + "norm2.weight": (dim,),
                    prefix + "norm2.bias": (dim,),
                    prefix + "mlp.fc1.weight": (hidden, dim),
                    prefix + "mlp.fc1.bias": (hidden,),
                    prefix + "mlp.fc2.weight": (dim, hidden),
                    prefix + "mlp.fc2.bias": (dim,),
                }
            )
        if stage < num_stages - 1:
            prefix = f"visual_encoder.layers.{stage}.downsample."
            shapes[prefix + "norm.weight"] = (4 * dim,)
            shapes[prefix + "norm.bias"] = (4 * dim,)
            shapes[prefix + "reduction.weight"] = (2 * dim, 4 * dim)
    num_features = embed_dim * 2 ** (num_stages - 1)
    shapes["visual_encoder.norm.weight"] = (num_features,)
    shapes["visual_encoder.norm.bias"] = (num_features,)
    shapes["image_proj.weight"] = (config["projection_dim"], num_features)
    shapes["image_proj.bias"] = (config["projection_dim"],)
    return shapes


def dape_lora_key_shapes(
    config: Mapping[str, Any] | None = None, rank: int = DAPE_LORA_RANK
) -> dict[str, tuple[int, ...]]:
    r"""
    Every LoRA key, with its shape, that the DAPE checkpoint must provide: `lora_A` `(2 * rank, C)` and `lora_B`
    `(2 * C, rank)` for the `attn.qkv` of every Swin block (C: the block's channels).

    Example:

    ```py
    >>> dape_lora_key_shapes()["visual_encoder.layers.2.blocks.17.attn.qkv.lora_B"]
    (1536, 8)
    ```
    """
    config = resolve_dape_config(config)
    shapes = {}
    for stage, depth in enumerate(config["depths"]):
        dim = config["embed_dim"] * 2**stage
        for block in range(depth):
            prefix = f"visual_encoder.layers.{stage}.blocks.{block}.attn.qkv."
            shapes[prefix + "lora_A"] = (2 * rank, dim)
            shapes[prefix + "lora_B"] = (2 * dim, rank)
    return shapes


def merge_dape_lora(
    qkv_weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float = DAPE_LORA_ALPHA / DAPE_LORA_RANK,
) -> torch.Tensor:
    r"""
    Merges a loralib `MergedLinear` LoRA with `enable_lora=[True, False, True]` into a fused `(3C, C)` qkv weight:
    `W_q += scale * B[:C] @ A[:r]`, `W_v += scale * B[C:] @ A[r:]`; `W_k` is unchanged. Computed in float32 and
    returned in the dtype of `qkv_weight`.

    Example:

    ```py
    >>> merged = merge_dape_lora(torch.randn(24, 8), torch.randn(16, 8), torch.randn(16, 8), scale=1 / 8)
    ```
    """
    dim = qkv_weight.shape[1]
    rank = lora_A.shape[0] // 2
    if qkv_weight.shape != (3 * dim, dim) or lora_A.shape != (2 * rank, dim) or lora_B.shape != (2 * dim, rank):
        raise ValueError(
            f"Incompatible shapes: qkv weight {tuple(qkv_weight.shape)} (expected (3C, C)), lora_A "
            f"{tuple(lora_A.shape)} (expected (2r, C)), lora_B {tuple(lora_B.shape)} (expected (2C, r))."
        )
    lora_A, lora_B = lora_A.float(), lora_B.float()
    delta_q = lora_B[:dim] @ lora_A[:rank]
    delta_v = lora_B[dim:] @ lora_A[rank:]
    merged = qkv_weight.float().clone()
    merged[:dim] += scale * delta_q
    merged[2 * dim :] += scale * delta_v
    return merged.to(qkv_weight.dtype)


def _check_keys(
    name: str, state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], hint: str
) -> None:
    """Raises a ValueError naming the first missing, then unexpected, then mis-shaped key."""
    for key, shape in expected.items():
        if key not in state_dict:
            raise ValueError(f"The {name} checkpoint is missing {key!r} (expected shape {shape}). {hint}")
    for key in state_dict:
        if key not in expected:
            raise ValueError(f"The {name} checkpoint has an unexpected key {key!r}. {hint}")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != tuple(shape):
            raise ValueError(
                f"The {name} checkpoint's {key!r} has shape {tuple(state_dict[key].shape)}, expected {shape}. {hint}"
            )


def convert_ram_dape_to_diffusers(
    ram_state_dict: Mapping[str, torch.Tensor],
    dape_state_dict: Mapping[str, torch.Tensor] | None,
    config: Mapping[str, Any] | None = None,
    lora_rank: int = DAPE_LORA_RANK,
    lora_alpha: float = DAPE_LORA_ALPHA,
) -> dict[str, torch.Tensor]:
    r"""
    Converts the original RAM Swin encoder + `image_proj` and the DAPE LoRA into a [`DAPEImageEncoder`] state dict.

    From `ram_state_dict` only `visual_encoder.*` and `image_proj.*` are used, minus the `relative_position_index` and
    `attn_mask` buffers; from `dape_state_dict` only the `lora_*` keys under `visual_encoder.` (the release reads
    nothing else from `DAPE.pth`). Both must then match the layout derived from `config` exactly. The LoRA is merged
    into every fused `attn.qkv` (Q and V rows, scale `lora_alpha / lora_rank` = 1/8) before it is split into
    transformers' `q_proj` / `k_proj` / `v_proj`.

    Args:
        ram_state_dict (`Mapping[str, torch.Tensor]`):
            The `"model"` dict of `ram_swin_large_14m.pth` (see `load_original_checkpoint`).
        dape_state_dict (`Mapping[str, torch.Tensor]`, *optional*):
            The flat dict of `DAPE.pth`; `None` converts RAM's encoder without DAPE.
        config (`Mapping[str, Any]`, *optional*):
            [`DAPEImageEncoder`] configuration (missing entries take the defaults, i.e. Swin-L at 384).
        lora_rank (`int`, defaults to `8`), lora_alpha (`float`, defaults to `1.0`):
            loralib rank and alpha of the DAPE LoRA.

    Returns:
        `dict[str, torch.Tensor]`: a state dict that [`DAPEImageEncoder`] loads strictly.

    Raises:
        `ValueError`: naming the first missing, unexpected or mis-shaped key of either checkpoint.

    Example:

    ```py
    >>> ram = load_original_checkpoint("ram_swin_large_14m.pth")
    >>> dape = load_original_checkpoint("DAPE.pth")
    >>> encoder = DAPEImageEncoder()
    >>> encoder.load_state_dict(convert_ram_dape_to_diffusers(ram, dape, encoder.config), strict=True)
    >>> encoder.save_pretrained("InfVSR-diffusers/image_encoder")
    ```
    """
    config = resolve_dape_config(config)
    ram = {
        key: value
        for key, value in ram_state_dict.items()
        if key.startswith(_RAM_PREFIXES) and not key.endswith(_RAM_BUFFER_SUFFIXES)
    }
    _check_keys(
        "RAM",
        ram,
        ram_key_shapes(config),
        f"Expected RAM's Swin ({_config_summary(config)}) in the original Microsoft layout.",
    )
    lora = None
    if dape_state_dict is not None:
        lora = {
            key: value
            for key, value in dape_state_dict.items()
            if key.startswith("visual_encoder.") and ".lora_" in key
        }
        _check_keys(
            "DAPE",
            lora,
            dape_lora_key_shapes(config, lora_rank),
            f"Expected a rank-{lora_rank} LoRA on the `attn.qkv` of every block of {_config_summary(config)}.",
        )
    scale = lora_alpha / lora_rank

    converted = {
        "swin.embeddings.patch_embeddings.projection.weight": ram["visual_encoder.patch_embed.proj.weight"],
        "swin.embeddings.patch_embeddings.projection.bias": ram["visual_encoder.patch_embed.proj.bias"],
        "swin.embeddings.norm.weight": ram["visual_encoder.patch_embed.norm.weight"],
        "swin.embeddings.norm.bias": ram["visual_encoder.patch_embed.norm.bias"],
    }
    num_stages = len(config["depths"])
    for stage, depth in enumerate(config["depths"]):
        for block in range(depth):
            source = f"visual_encoder.layers.{stage}.blocks.{block}."
            target = f"swin.encoder.layers.{stage}.blocks.{block}."
            for old, new in _BLOCK_RENAMES.items():
                converted[f"{target}{new}.weight"] = ram[f"{source}{old}.weight"]
                converted[f"{target}{new}.bias"] = ram[f"{source}{old}.bias"]
            converted[f"{target}attention.relative_position_bias.relative_position_bias_table"] = ram[
                f"{source}attn.relative_position_bias_table"
            ]
            qkv_weight, qkv_bias = ram[f"{source}attn.qkv.weight"], ram[f"{source}attn.qkv.bias"]
            if lora is not None:
                qkv_weight = merge_dape_lora(
                    qkv_weight, lora[f"{source}attn.qkv.lora_A"], lora[f"{source}attn.qkv.lora_B"], scale
                )
            for name, weight, bias in zip(("q_proj", "k_proj", "v_proj"), qkv_weight.chunk(3), qkv_bias.chunk(3)):
                converted[f"{target}attention.{name}.weight"] = weight.clone()
                converted[f"{target}attention.{name}.bias"] = bias.clone()
        if stage < num_stages - 1:
            for name in ("norm.weight", "norm.bias", "reduction.weight"):
                converted[f"swin.encoder.layers.{stage}.downsample.{name}"] = ram[
                    f"visual_encoder.layers.{stage}.downsample.{name}"
                ]
    converted["swin.layernorm.weight"] = ram["visual_encoder.norm.weight"]
    converted["swin.layernorm.bias"] = ram["visual_encoder.norm.bias"]
    converted["proj.weight"] = ram["image_proj.weight"]
    converted["proj.bias"] = ram["image_proj.bias"]
    return converted


def _config_summary(config: Mapping[str, Any]) -> str:
    return (
        f"image_size={config['image_size']}, patch_size={config['patch_size']}, embed_dim={config['embed_dim']}, "
        f"depths={list(config['depths'])}, num_heads={list(config['num_heads'])}, "
        f"window_size={config['window_size']}, projection_dim={config['projection_dim']}"
    )


def convert_transformer(
    checkpoint: dict[str, torch.Tensor], config: dict = INFVSR_TRANSFORMER_CONFIG, dtype: torch.dtype | None = None
) -> CausalWanTransformer3DModel:
    """`InfVSR.ckpt` (original Wan layout) -> [`CausalWanTransformer3DModel`], through diffusers' Wan converter."""
    converted = convert_wan_transformer_to_diffusers(dict(checkpoint))
    return _load_converted(
        CausalWanTransformer3DModel, config, converted, "InfVSR DiT (after conversion to diffusers names)", dtype
    )


def convert_vae(
    checkpoint: dict[str, torch.Tensor], config: dict | None = None, dtype: torch.dtype | None = None
) -> AutoencoderKLWan:
    """`Wan2.1_VAE.pth` -> [`~diffusers.AutoencoderKLWan`], through diffusers' Wan VAE converter."""
    converted = convert_wan_vae_to_diffusers(dict(checkpoint))
    return _load_converted(
        AutoencoderKLWan, config or {}, converted, "Wan2.1 VAE (after conversion to diffusers names)", dtype
    )


def convert_image_encoder(
    ram_checkpoint: dict[str, torch.Tensor],
    dape_checkpoint: dict[str, torch.Tensor] | None,
    config: dict | None = None,
    dtype: torch.dtype | None = None,
) -> DAPEImageEncoder:
    """RAM's Swin-L + `image_proj` with the DAPE LoRA merged -> [`DAPEImageEncoder`]."""
    converted = convert_ram_dape_to_diffusers(ram_checkpoint, dape_checkpoint, config)
    return _load_converted(
        DAPEImageEncoder, config or {}, converted, "RAM/DAPE image encoder (after conversion)", dtype
    )


def convert_infvsr(
    dit_path: str | os.PathLike,
    vae_path: str | os.PathLike,
    ram_path: str | os.PathLike,
    dape_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
    model_card: str | os.PathLike | None = None,
    transformer_config: dict = INFVSR_TRANSFORMER_CONFIG,
    vae_config: dict | None = None,
    image_encoder_config: dict | None = None,
    repo_id: str | None = None,
) -> InfVSRPipeline:
    r"""
    Convert the four released files into an [`InfVSRPipeline`] saved under `output_dir` (safetensors per component,
    `model_index.json`, scheduler config, the pipeline's remote code, and the model card as `README.md`, whose usage
    snippets load `repo_id`, or `output_dir` when no repository is given). `output_dir` must not exist or be empty;
    the folder appears only once complete.

    Example:

    ```py
    >>> pipe = convert_infvsr("InfVSR.ckpt", "Wan2.1_VAE.pth", "ram_swin_large_14m.pth", "DAPE.pth", "InfVSR-diffusers")
    ```
    """
    model_card = Path(model_card) if model_card is not None else default_model_card_path()
    if model_card is None or not model_card.is_file():
        raise FileNotFoundError(f"Model card not found ({model_card}); pass the path of model_card.md.")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new output folder.")

    pipe = InfVSRPipeline(
        transformer=convert_transformer(load_original_checkpoint(dit_path), transformer_config, dtype),
        vae=convert_vae(load_original_checkpoint(vae_path), vae_config, dtype),
        image_encoder=convert_image_encoder(
            load_original_checkpoint(ram_path), load_original_checkpoint(dape_path), image_encoder_config, dtype
        ),
        scheduler=InfVSRScheduler(),
    )
    # Write beside the target and rename at the end: a failed conversion leaves no half-written folder behind.
    partial_dir = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    try:
        pipe.save_pretrained(partial_dir, safe_serialization=True)
        card = render_model_card(model_card, repo_id or str(output_dir))
        (partial_dir / "README.md").write_text(card, encoding="utf-8")
        os.replace(partial_dir, output_dir)
    finally:
        shutil.rmtree(partial_dir, ignore_errors=True)
    return pipe
