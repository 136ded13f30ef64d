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
"""Streaming causal encode/decode with diffusers' `AutoencoderKLWan`, with optional spatial tiles."""

import torch
from diffusers import AutoencoderKLWan
from diffusers.hooks.group_offloading import _get_group_onload_device
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d


def tile_spans(extent: int, tile_size: int | None, tile_stride: int) -> list[tuple[int, int]]:
    """`[start, end)` spans starting every `tile_stride` and clipped at `extent`, until one reaches the end."""
    if tile_size is None or extent <= tile_size:
        return [(0, extent)]
    spans = []
    for start in range(0, extent, tile_stride):
        spans.append((start, min(start + tile_size, extent)))
        if start + tile_size >= extent:
            break
    return spans


def feather_weights(span: tuple[int, int], extent: int, ramp_width: int) -> torch.Tensor:
    """
    1-D blend weights of a tile covering `span` of `extent`: one, except for a linear ramp `1/w, 2/w, ..., 1` of width
    `w = ramp_width` on each side that is not on the border (as in the InfVSR release).
    """
    length = span[1] - span[0]
    weights = torch.ones(length, dtype=torch.float64)
    ramp = torch.arange(1, ramp_width + 1, dtype=torch.float64)[:length] / ramp_width
    if span[0] > 0:
        weights[: len(ramp)] = torch.minimum(weights[: len(ramp)], ramp)
    if span[1] < extent:
        weights[length - len(ramp) :] = torch.minimum(weights[length - len(ramp) :], ramp.flip(0))
    return weights


def latent_statistics(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's `latents_mean` / `latents_std` as `(1, z_dim, 1, 1, 1)` tensors on `like`'s device and dtype."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype)
    return mean.view(shape), std.view(shape)


def count_causal_convs(module: torch.nn.Module) -> int:
    """Number of causal 3-D convolutions in `module`: the length of its `feat_cache` list."""
    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def _move_cache(cache: list, device: torch.device) -> None:
    for i, entry in enumerate(cache):
        if isinstance(entry, torch.Tensor):
            cache[i] = entry.to(device, non_blocking=True)


class WanVAEStream:
    r"""
    Encodes and decodes one video stream piece by piece with [`~diffusers.AutoencoderKLWan`], keeping the causal
    convolution caches of the encoder and the decoder between calls. The results equal one-shot `vae.encode` /
    `vae.decode` of the whole clip, with memory independent of its length. Latents are normalized with the VAE's
    `latents_mean` / `latents_std` (the posterior mean is used).

    Large frames can be split into overlapping spatial tiles, each with its own caches, blended with feathered weights;
    peak activation memory then depends on the tile size, not the frame size.

    Args:
        vae (`AutoencoderKLWan`): A Wan2.1-layout VAE (no `patch_size`).
        tile_latent_size (`int`, *optional*):
            Tile side in latent pixels (8 image pixels each). `None` disables tiling.
        tile_latent_stride (`int`, *optional*):
            Distance between tile starts in latent pixels; defaults to the release's 110/128 of the tile size. Tiles
            overlap by `tile_latent_size - tile_latent_stride`, blended with linear ramps across the overlap.
        offload_idle_tiles (`bool`, defaults to `False`):
            Keep the caches of the tiles that are not being processed in host memory.

    Example:

    ```py
    >>> stream = WanVAEStream(vae)
    >>> latents = stream.encode(video[:, :, :9])  # first chunk: 1 + 4k frames -> 1 + k latent frames
    >>> latents = torch.cat([latents, stream.encode(video[:, :, 9:21])], dim=2)  # later chunks: 4k frames
    >>> frames = stream.decode(latents)  # any number of latent frames, in [-1, 1]
    >>> stream.reset()  # start a new, unrelated stream (e.g. after a scene cut)
    ```
    """

    def __init__(
        self,
        vae: AutoencoderKLWan,
        tile_latent_size: int | None = None,
        tile_latent_stride: int | None = None,
        offload_idle_tiles: bool = False,
    ):
        if vae.config.patch_size is not None:
            raise ValueError(
                "WanVAEStream drives the Wan2.1 VAE layout; this VAE has `patch_size` set (Wan2.2), which is not "
                "supported."
            )
        if tile_latent_size is not None:
            tile_latent_stride = tile_latent_stride or max(1, tile_latent_size * 110 // 128)
            if not 0 < tile_latent_stride <= tile_latent_size:
                raise ValueError(
                    f"`tile_latent_stride` must be in (0, tile_latent_size={tile_latent_size}], got "
                    f"{tile_latent_stride}."
                )
        self.vae = vae
        self.tile_latent_size = tile_latent_size
        self.tile_latent_stride = tile_latent_stride
        self.offload_idle_tiles = offload_idle_tiles
        self.spatial_scale = vae.config.scale_factor_spatial
        self.temporal_scale = vae.config.scale_factor_temporal
        self._encoder_convs = count_causal_convs(vae.encoder)
        self._decoder_convs = count_causal_convs(vae.decoder)
        self.reset()

    def reset(self) -> None:
        """Forget the causal history: the next `encode` takes a first chunk again and `decode` restarts."""
        self._encoder_caches: dict[tuple[int, int], list] = {}
        self._decoder_caches: dict[tuple[int, int], list] = {}
        self._encoded_size: tuple[int, int] | None = None
        self._decoded_size: tuple[int, int] | None = None

    def state_dict(self) -> dict:
        """The causal history as plain tensors and values (on the CPU), for `torch.save`; see `load_state_dict`."""

        def to_cpu(caches: dict) -> dict:
            return {
                tile: [entry.cpu() if isinstance(entry, torch.Tensor) else entry for entry in cache]
                for tile, cache in caches.items()
            }

        return {
            "encoder_caches": to_cpu(self._encoder_caches),
            "decoder_caches": to_cpu(self._decoder_caches),
            "encoded_size": self._encoded_size,
            "decoded_size": self._decoded_size,
        }

    def load_state_dict(self, state_dict: dict, device: torch.device | str) -> None:
        """Continue the stream saved with `state_dict` (same VAE and tiling), with the caches on `device`."""
        for name in ("encoder_caches", "decoder_caches"):
            caches = {tuple(tile): list(cache) for tile, cache in state_dict[name].items()}
            for cache in caches.values():
                _move_cache(cache, device)
            setattr(self, f"_{name}", caches)
        for name in ("encoded_size", "decoded_size"):
            size = state_dict[name]
            setattr(self, f"_{name}", tuple(size) if size is not None else None)

    def _onload_vae(self) -> None:
        # The driver calls the VAE's encoder and decoder directly, never `vae.forward`, so the hook that
        # `enable_model_cpu_offload` puts on the VAE itself is run here, as `vae.encode` / `vae.decode` do. (Group
        # offloading hooks the encoder, decoder and quant convs of `AutoencoderKLWan` themselves.)
        hook = getattr(self.vae, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.vae)

    @property
    def execution_device(self) -> torch.device:
        """Where the VAE computes: the onload device under offloading, else the device of its weights."""
        for module in self.vae.modules():
            device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if device is not None:
                return torch.device(device)
        try:
            return _get_group_onload_device(self.vae)
        except ValueError:
            return self.vae.device

    def _run_tiled(self, inputs, caches, num_convs, in_scale, out_scale, out_shape, run_tile):
        """Run `run_tile(tile_inputs, cache)` over the spatial tiles of `inputs` and blend the outputs."""
        latent_height, latent_width = inputs.shape[-2] // in_scale, inputs.shape[-1] // in_scale
        rows = tile_spans(latent_height, self.tile_latent_size, self.tile_latent_stride)
        cols = tile_spans(latent_width, self.tile_latent_size, self.tile_latent_stride)
        if len(rows) == len(cols) == 1:
            return run_tile(inputs, caches.setdefault((0, 0), [None] * num_convs))

        ramp_width = (self.tile_latent_size - self.tile_latent_stride) * out_scale
        output = inputs.new_zeros(out_shape)
        total_weight = inputs.new_zeros(out_shape[-2:])
        for row_index, (top, bottom) in enumerate(rows):
            row_weights = feather_weights((top * out_scale, bottom * out_scale), latent_height * out_scale, ramp_width)
            for col_index, (left, right) in enumerate(cols):
                cache = caches.setdefault((row_index, col_index), [None] * num_convs)
                if self.offload_idle_tiles:
                    _move_cache(cache, inputs.device)
                tile = inputs[..., top * in_scale : bottom * in_scale, left * in_scale : right * in_scale]
                tile_output = run_tile(tile, cache)
                if self.offload_idle_tiles:
                    _move_cache(cache, torch.device("cpu"))
                col_weights = feather_weights(
                    (left * out_scale, right * out_scale), latent_width * out_scale, ramp_width
                )
                weight = torch.minimum(row_weights[:, None], col_weights[None, :]).to(output)
                window = (slice(top * out_scale, bottom * out_scale), slice(left * out_scale, right * out_scale))
                output[(..., *window)] += tile_output * weight
                total_weight[window] += weight
        return output / total_weight

    def _check_video(self, video: torch.Tensor, name: str, channels: int) -> None:
        if video.ndim != 5:
            raise ValueError(
                f"`{name}` must have shape (batch_size, channels, frames, height, width), got a tensor of rank "
                f"{video.ndim} with shape {tuple(video.shape)}."
            )
        if video.shape[1] != channels:
            raise ValueError(f"`{name}` must have {channels} channels (dim 1), got {video.shape[1]}.")

    def _check_stream_size(self, size: tuple[int, int], started_size: tuple[int, int] | None, what: str) -> None:
        if started_size is not None and size != started_size:
            raise ValueError(
                f"This stream's {what} caches were built for frames of (height, width) = {started_size}, but this "
                f"chunk has {size}. Call `reset()` (or use another WanVAEStream) for a video of another size."
            )

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        r"""
        Encode the next chunk of the stream.

        Args:
            video (`torch.Tensor` of shape `(batch_size, 3, frames, height, width)`):
                Pixels in [-1, 1]. The first chunk of a stream has `1 + 4k` frames, later chunks `4k` (k >= 1).
                Height and width must be multiples of 8.

        Returns:
            `torch.Tensor` of shape `(batch_size, z_dim, latent_frames, height / 8, width / 8)`: normalized latents,
            `1 + k` latent frames for the first chunk and `k` for later ones.
        """
        self._check_video(video, "video", self.vae.config.in_channels)
        _, _, num_frames, height, width = video.shape
        first = self._encoded_size is None
        step = self.temporal_scale
        if (first and (num_frames - 1) % step) or (not first and (num_frames == 0 or num_frames % step)):
            rule = f"1 + {step}k frames (k >= 0)" if first else f"{step}k frames (k >= 1)"
            raise ValueError(
                f"The Wan VAE is causal: the {'first' if first else 'next'} chunk of a stream must have {rule}, got "
                f"{num_frames}. Pad the chunk by repeating its last frame, or call `reset()` to start a new stream."
            )
        if height % self.spatial_scale or width % self.spatial_scale:
            raise ValueError(
                f"Frame height and width must be multiples of {self.spatial_scale}, got {(height, width)}. Pad the "
                "frames (e.g. by replicating the border) before encoding."
            )
        self._check_stream_size((height, width), self._encoded_size, "encoder")
        self._encoded_size = (height, width)

        video = video.to(device=self.execution_device, dtype=self.vae.dtype)
        z_dim = self.vae.config.z_dim
        out_shape = (video.shape[0], z_dim, (num_frames - 1) // step + 1 if first else num_frames // step)
        out_shape += (height // self.spatial_scale, width // self.spatial_scale)

        def encode_tile(tile: torch.Tensor, cache: list) -> torch.Tensor:
            groups = ([tile[:, :, :1]] if first else []) + list(tile[:, :, int(first) :].split(step, dim=2))
            outputs = [self.vae.encoder(group, feat_cache=cache, feat_idx=[0]) for group in groups if group.shape[2]]
            return self.vae.quant_conv(torch.cat(outputs, dim=2))[:, :z_dim]

        self._onload_vae()
        posterior_mean = self._run_tiled(
            video, self._encoder_caches, self._encoder_convs, self.spatial_scale, 1, out_shape, encode_tile
        )
        latents_mean, latents_std = latent_statistics(self.vae, posterior_mean)
        return (posterior_mean - latents_mean) / latents_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        r"""
        Decode the next latent frames of the stream, one latent frame at a time.

        Args:
            latents (`torch.Tensor` of shape `(batch_size, z_dim, latent_frames, height, width)`):
                Normalized latents, any number of frames.

        Returns:
            `torch.Tensor` of shape `(batch_size, 3, frames, 8 * height, 8 * width)` in [-1, 1]: `1 + 4(n - 1)` frames
            for the stream's first `n` latent frames, then 4 per latent frame.
        """
        self._check_video(latents, "latents", self.vae.config.z_dim)
        batch_size, _, num_latent_frames, height, width = latents.shape
        first = self._decoded_size is None
        self._check_stream_size((height, width), self._decoded_size, "decoder")
        self._decoded_size = (height, width)

        latents = latents.to(device=self.execution_device, dtype=self.vae.dtype)
        latents_mean, latents_std = latent_statistics(self.vae, latents)
        latents = latents * latents_std + latents_mean
        num_frames = num_latent_frames * self.temporal_scale - (self.temporal_scale - 1 if first else 0)
        out_shape = (batch_size, self.vae.config.out_channels, num_frames)
        out_shape += (height * self.spatial_scale, width * self.spatial_scale)

        def decode_tile(tile: torch.Tensor, cache: list) -> torch.Tensor:
            tile = self.vae.post_quant_conv(tile)
            outputs = [
                self.vae.decoder(tile[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=first and i == 0)
                for i in range(num_latent_frames)
            ]
            return torch.cat(outputs, dim=2)

        self._onload_vae()
        video = self._run_tiled(
            latents, self._decoder_caches, self._decoder_convs, 1, self.spatial_scale, out_shape, decode_tile
        )
        return video.clamp(-1.0, 1.0)
