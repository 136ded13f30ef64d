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
"""DAPE visual-prompt encoder: RAM's Swin image encoder (with DAPE's LoRA merged) and its projection to 512."""

import torch
import torch.nn.functional as F
import transformers
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import SwinConfig, SwinModel


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DAPEImageEncoder(ModelMixin, ConfigMixin):
    r"""
    The visual-prompt encoder of InfVSR: the Swin image encoder of RAM, with the DAPE LoRA merged into its weights,
    followed by RAM's `image_proj`.

    The output of [`~DAPEImageEncoder.forward`] is `[pooled token, patch tokens]` after the final LayerNorm of the Swin,
    projected to `projection_dim`; for the default (Swin-L, 384 x 384) configuration that is `(batch, 145, 512)`, the
    context the InfVSR transformer attends to. Original RAM / DAPE checkpoints are converted with
    `convert_ram_dape_to_diffusers`.

    Args:
        image_size (`int`, defaults to `384`):
            Side of the square input image.
        patch_size (`int`, defaults to `4`):
            Side of the square patches of the patch embedding.
        embed_dim (`int`, defaults to `192`):
            Channels of the first stage; every later stage doubles them.
        depths (`tuple[int, ...]`, defaults to `(2, 2, 18, 2)`):
            Number of Swin blocks per stage.
        num_heads (`tuple[int, ...]`, defaults to `(6, 12, 24, 48)`):
            Number of attention heads per stage.
        window_size (`int`, defaults to `12`):
            Side of the attention windows. Every stage's resolution must be a multiple of it; a stage whose
            resolution equals it attends globally and does not shift its windows (as in the original Swin).
        mlp_ratio (`float`, defaults to `4.0`):
            Ratio of the MLP hidden size to the stage's channels.
        layer_norm_eps (`float`, defaults to `1e-5`):
            Epsilon of the LayerNorms in the blocks and of the final LayerNorm. The patch-embedding and
            patch-merging LayerNorms always use `1e-5` (in the original Swin as in transformers).
        projection_dim (`int`, defaults to `512`):
            Output channels of the final projection (RAM's `image_proj`).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_infvsr.models.image_encoder_dape import DAPEImageEncoder

    >>> encoder = DAPEImageEncoder.from_pretrained("path/to/image_encoder", dtype=torch.bfloat16).to("cuda")
    >>> reference = video[:, :, 0]  # (batch, 3, height, width), RGB in [0, 1]
    >>> with torch.no_grad():
    ...     visual_prompt = encoder.encode_reference(reference)  # (batch, 145, 512), bfloat16
    ```
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 384,
        patch_size: int = 4,
        embed_dim: int = 192,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (6, 12, 24, 48),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-5,
        projection_dim: int = 512,
    ):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        _check_swin_config(image_size, patch_size, embed_dim, depths, num_heads, window_size)

        swin_config = SwinConfig(
            image_size=image_size,
            patch_size=patch_size,
            num_channels=3,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
            hidden_act="gelu",
            use_absolute_embeddings=False,
            layer_norm_eps=layer_norm_eps,
        )
        self.swin = SwinModel(swin_config, add_pooling_layer=True)
        self.proj = nn.Linear(self.swin.num_features, projection_dim)

        attention = self.swin.encoder.layers[0].blocks[0].attention
        if not (hasattr(attention, "q_proj") and hasattr(attention, "relative_position_bias")):
            raise ImportError(
                "`DAPEImageEncoder` needs the Swin attention layout of transformers >= 5.9 (`attention.q_proj`, "
                f"`attention.relative_position_bias`), but transformers {transformers.__version__} is installed."
            )

    @property
    def num_tokens(self) -> int:
        """Number of output tokens: one pooled token plus the patch tokens of the last stage."""
        side = self.config.image_size // self.config.patch_size // 2 ** (len(self.config.depths) - 1)
        return 1 + side * side

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        r"""
        Encodes normalized images (see [`~DAPEImageEncoder.preprocess`]) into visual-prompt tokens.

        Args:
            pixel_values (`torch.Tensor`):
                Normalized images of shape `(batch, 3, image_size, image_size)`.

        Returns:
            `torch.Tensor`: `(batch, 1 + num_patch_tokens, projection_dim)`: the average-pooled token followed by the
            patch tokens of the last stage, after the final LayerNorm, projected by `proj`.

        Example:

        ```py
        >>> pixel_values = encoder.preprocess(frames)  # frames: (batch, 3, height, width) in [0, 1]
        >>> tokens = encoder(pixel_values.to(encoder.dtype))  # (batch, 145, 512) for the default configuration
        ```
        """
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"`pixel_values` must have shape (batch, 3, {size}, {size}), got {tuple(pixel_values.shape)}."
            )
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"`pixel_values` must be {size} x {size} (the configured `image_size`), got "
                f"{tuple(pixel_values.shape[-2:])}; resize with `preprocess` first."
            )
        outputs = self.swin(pixel_values=pixel_values)
        tokens = torch.cat([outputs.pooler_output.unsqueeze(1), outputs.last_hidden_state], dim=1)
        return self.proj(tokens)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        Resizes RGB images in `[0, 1]` to `image_size` x `image_size` (bilinear, antialiased, as torchvision's tensor
        `Resize`) and normalizes them with the ImageNet mean and standard deviation. Computed in float32.

        Args:
            images (`torch.Tensor`):
                Float images of shape `(batch, 3, height, width)` with values in `[0, 1]`.

        Returns:
            `torch.Tensor`: float32 tensor of shape `(batch, 3, image_size, image_size)` on the device of `images`.

        Example:

        ```py
        >>> frames = torch.rand(2, 3, 270, 480)
        >>> encoder.preprocess(frames).shape
        torch.Size([2, 3, 384, 384])
        ```
        """
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"`images` must be a torch.Tensor, got {type(images).__name__}.")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must have shape (batch, 3, height, width), got {tuple(images.shape)}.")
        if not images.is_floating_point():
            raise ValueError(
                f"`images` must be a float tensor with values in [0, 1], got dtype {images.dtype} "
                "(for uint8 frames use `frames.float() / 255`)."
            )
        size = self.config.image_size
        images = images.float()
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_reference(self, frames: torch.Tensor) -> torch.Tensor:
        r"""
        [`~DAPEImageEncoder.preprocess`] followed by [`~DAPEImageEncoder.forward`]: the visual prompt of reference
        frames. Preprocessing runs in float32 on the device of `frames` (the model's execution device, which under
        offloading is not where its weights are stored); the result is in the model's dtype.

        Args:
            frames (`torch.Tensor`):
                Float RGB frames of shape `(batch, 3, height, width)` with values in `[0, 1]`.

        Returns:
            `torch.Tensor`: `(batch, 1 + num_patch_tokens, projection_dim)` in the model's dtype.

        Example:

        ```py
        >>> first_frame = video[:, :, 0] / 2 + 0.5  # (batch, 3, height, width), from [-1, 1] to [0, 1]
        >>> with torch.no_grad():
        ...     visual_prompt = encoder.encode_reference(first_frame)
        ```
        """
        pixel_values = self.preprocess(frames)
        return self(pixel_values.to(self.dtype))


def _check_swin_config(
    image_size: int, patch_size: int, embed_dim: int, depths: list[int], num_heads: list[int], window_size: int
) -> None:
    """Refuses configurations that transformers' Swin would run differently from the original Swin."""
    if len(depths) == 0 or len(depths) != len(num_heads):
        raise ValueError(
            f"`depths` and `num_heads` must be non-empty and of equal length, got {depths} and {num_heads}."
        )
    if image_size % patch_size != 0:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}).")
    resolution = image_size // patch_size
    for stage, heads in enumerate(num_heads):
        dim = embed_dim * 2**stage
        if dim % heads != 0:
            raise ValueError(f"Stage {stage}: its {dim} channels are not divisible by its {heads} heads.")
        if resolution % window_size != 0:
            raise ValueError(
                f"Stage {stage}: its resolution {resolution} is not a multiple of `window_size` ({window_size}); "
                "transformers would pad or shrink the windows where the original Swin does not."
            )
        if stage < len(depths) - 1:
            if resolution % 2 != 0:
                raise ValueError(f"Stage {stage}: its resolution {resolution} is odd and cannot be patch-merged.")
            resolution //= 2
