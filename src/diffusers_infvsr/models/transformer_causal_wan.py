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
"""Wan2.1 DiT that restores a video chunk by chunk, each chunk attending to itself and a rolling KV cache."""

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.hooks.context_parallel import EquipartitionSharder
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader finds the base class here)
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTransformer3DModel,
    _get_qkv_projections,
)
from diffusers.utils import BaseOutput, apply_lora_scale


class CausalWanKVCache:
    r"""
    Rolling self-attention cache of one video stream for [`CausalWanTransformer3DModel`].

    Holds, for every transformer block, the keys (after q/k RMSNorm and RoPE) and values of the most recent
    `cache_frames` latent frames, plus the absolute temporal index of the next chunk. A cache is never modified in
    place: the model returns a new one, so independent videos use independent caches and an old cache can be reused.

    Args:
        cache_frames (`int`, defaults to `3`):
            Number of past latent frames every chunk may attend to. `0` disables the cache.
        start_frame (`int`, defaults to `0`):
            Absolute temporal RoPE index of the first chunk.

    Example:

    ```py
    >>> cache = CausalWanKVCache(cache_frames=3)
    >>> for chunk in latent_chunks:  # each (batch, 16, frames, height, width)
    ...     velocity, cache = transformer(chunk, timestep, prompt_embeds, kv_cache=cache, return_dict=False)
    ```
    """

    def __init__(self, cache_frames: int = 3, start_frame: int = 0):
        if cache_frames < 0:
            raise ValueError(f"`cache_frames` must be >= 0, got {cache_frames}.")
        if start_frame < 0:
            raise ValueError(f"`start_frame` must be >= 0, got {start_frame}.")
        self.cache_frames = cache_frames
        self.next_frame = start_frame
        # Number of latent frames held. Under context parallelism each rank holds an equal share of their tokens.
        self.num_frames = 0
        # (batch_size, post_patch_height, post_patch_width) of the chunks seen so far; None while empty.
        self.grid: tuple[int, int, int] | None = None
        self.key_states: list[torch.Tensor] = []
        self.value_states: list[torch.Tensor] = []

    def check_compatible(self, batch_size: int, post_patch_height: int, post_patch_width: int) -> None:
        """Raise a `ValueError` if a chunk of this grid cannot continue the cached stream."""
        grid = (batch_size, post_patch_height, post_patch_width)
        if self.grid is not None and self.grid != grid:
            raise ValueError(
                f"The KV cache was filled with chunks of (batch, latent-token height, latent-token width) = {self.grid},"
                f" but this chunk has {grid}. Start a new `CausalWanKVCache` for a video of another size or batch."
            )

    def state_dict(self) -> dict:
        """The cache as plain tensors and numbers (on the CPU), for `torch.save`; see `from_state_dict`."""
        return {
            "cache_frames": self.cache_frames,
            "next_frame": self.next_frame,
            "num_frames": self.num_frames,
            "grid": self.grid,
            "key_states": [state.cpu() for state in self.key_states],
            "value_states": [state.cpu() for state in self.value_states],
        }

    @classmethod
    def from_state_dict(cls, state_dict: dict, device: torch.device | str | None = None) -> "CausalWanKVCache":
        """Rebuild a cache saved with `state_dict` (e.g. to resume a stream), with its tensors on `device`."""
        cache = cls(state_dict["cache_frames"], state_dict["next_frame"])
        cache.grid = tuple(state_dict["grid"]) if state_dict["grid"] is not None else None
        cache.key_states = [state.to(device) for state in state_dict["key_states"]]
        cache.value_states = [state.to(device) for state in state_dict["value_states"]]
        if "num_frames" in state_dict:
            cache.num_frames = state_dict["num_frames"]
        elif cache.key_states:  # saved before the count was stored: one process, all tokens
            cache.num_frames = cache.key_states[0].shape[1] // (cache.grid[1] * cache.grid[2])
        return cache

    def successor(
        self, grid: tuple[int, int, int], next_frame: int, num_frames: int, num_layers: int
    ) -> "CausalWanKVCache":
        """An empty cache for `num_frames` latent frames that the forward pass of one chunk fills, layer by layer."""
        cache = CausalWanKVCache(self.cache_frames, next_frame)
        cache.num_frames = num_frames
        cache.grid = grid
        cache.key_states = [None] * num_layers
        cache.value_states = [None] * num_layers
        return cache


@dataclass
class CausalSelfAttentionInputs:
    r"""
    What a causal self-attention layer needs besides its hidden states. The stock Wan block forwards its `rotary_emb`
    argument untouched to self-attention only, so the model passes this object in that place.

    Args:
        freqs_cos, freqs_sin (`torch.Tensor`): RoPE tables of the query tokens, `(1, seq_len, 1, head_dim)`.
        chunk_token_ranges (`list[tuple[int, int, int]]`, *optional*): block-causal mode: for each chunk,
            `(query_start, query_end, key_start)` in tokens; its queries attend to the keys `[key_start, query_end)`.
        past_cache (`CausalWanKVCache`, *optional*): keys/values to prepend (streaming mode).
        new_cache (`CausalWanKVCache`, *optional*): receives each layer's trimmed keys/values (streaming mode).
        keep_tokens (`int`): number of trailing key/value tokens to store in `new_cache`.
    """

    freqs_cos: torch.Tensor
    freqs_sin: torch.Tensor
    chunk_token_ranges: list[tuple[int, int, int]] | None = None
    past_cache: CausalWanKVCache | None = None
    new_cache: CausalWanKVCache | None = None
    keep_tokens: int = 0


def apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of `(batch, seq_len, heads, head_dim)` states, as Wan does."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class CausalWanAttnProcessor:
    r"""
    Self-attention of [`CausalWanTransformer3DModel`]: Wan's q/k RMSNorm and RoPE, then attention of the chunk's
    queries over `[cached keys, chunk keys]` (streaming), or, over a whole sequence of chunks (block-causal mode), one
    unmasked attention per chunk of its queries over its visible keys `[previous cache_frames frames, chunk]`. Runs
    through [`~diffusers.models.attention_dispatch.dispatch_attention_fn`], so `set_attention_backend` applies; no
    mode needs an attention mask, so every backend (flash included) runs all of them.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, layer_index: int):
        self.layer_index = layer_index

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: CausalSelfAttentionInputs | None = None,
    ) -> torch.Tensor:
        if not isinstance(rotary_emb, CausalSelfAttentionInputs):
            raise TypeError(
                "CausalWanAttnProcessor is the self-attention of CausalWanTransformer3DModel and expects "
                f"`CausalSelfAttentionInputs` in place of `rotary_emb`, got {type(rotary_emb).__name__}."
            )
        inputs = rotary_emb
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        query = apply_rotary_emb(query, inputs.freqs_cos, inputs.freqs_sin)
        key = apply_rotary_emb(key, inputs.freqs_cos, inputs.freqs_sin)

        if inputs.new_cache is not None:
            cached_tokens = 0
            if inputs.past_cache is not None and inputs.past_cache.key_states:
                cached_tokens = inputs.past_cache.key_states[self.layer_index].shape[1]
                key = torch.cat([inputs.past_cache.key_states[self.layer_index], key], dim=1)
                value = torch.cat([inputs.past_cache.value_states[self.layer_index], value], dim=1)
            inputs.new_cache.key_states[self.layer_index] = self._kept_tail(key, cached_tokens, inputs.keep_tokens)
            inputs.new_cache.value_states[self.layer_index] = self._kept_tail(value, cached_tokens, inputs.keep_tokens)

        if inputs.chunk_token_ranges is not None:
            hidden_states = torch.cat(
                [
                    self._attention(query[:, start:end], key[:, key_start:end], value[:, key_start:end])
                    for start, end, key_start in inputs.chunk_token_ranges
                ],
                dim=1,
            )
        else:
            hidden_states = self._attention(query, key, value)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states

    def _attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(
            query,
            key,
            value,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )

    def _kept_tail(self, states: torch.Tensor, cached_tokens: int, keep_tokens: int) -> torch.Tensor:
        """
        The last `keep_tokens` tokens of `[cached, chunk]` states `(batch, tokens, heads, head_dim)`, copied so the
        cache does not pin the storage of the whole concatenation.

        Under context parallelism each rank holds a shard of the cached tokens followed by a shard of the chunk's
        tokens. Attention does not depend on the order of keys, so any even split of the kept tokens over the ranks
        serves; the tail is taken in sequence order (gathered across ranks) and sharded again as diffusers shards.
        """
        config = self._parallel_config.context_parallel_config if self._parallel_config is not None else None
        if config is None:
            return states[:, states.shape[1] - keep_tokens :].clone()
        mesh = config._flattened_mesh
        if keep_tokens % mesh.size():
            raise ValueError(
                f"With context parallelism over {mesh.size()} processes the cache's {keep_tokens} tokens must split "
                "evenly; choose a frame size or `cache_frames` whose token count is a multiple of the process count."
            )
        batch_size, local_tokens, heads, head_dim = states.shape
        gathered = EquipartitionSharder.unshard(states, 1, mesh).unflatten(1, (mesh.size(), local_tokens))
        in_order = torch.cat(
            [gathered[:, :, :cached_tokens].flatten(1, 2), gathered[:, :, cached_tokens:].flatten(1, 2)], dim=1
        )
        return EquipartitionSharder.shard(in_order[:, in_order.shape[1] - keep_tokens :], 1, mesh).clone()


class CausalWanRotaryPosEmbed(WanRotaryPosEmbed):
    r"""
    Wan's 3D RoPE with the temporal index starting at `frame_offset`. Temporal frequencies are computed for the
    requested positions on every call (in float64), so the offset is unbounded; height and width indices start at 0
    and come from the precomputed table.
    """

    def __init__(self, attention_head_dim: int, patch_size: tuple[int, int, int], max_seq_len: int, theta=10000.0):
        super().__init__(attention_head_dim, patch_size, max_seq_len, theta)
        self.theta = theta

    def forward(self, hidden_states: torch.Tensor, frame_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w

        # float64 where the device has it (MPS has not); a device check, unlike a backend query, compiles.
        freqs_dtype = torch.float32 if self.freqs_cos.device.type == "mps" else torch.float64
        positions = torch.arange(frame_offset, frame_offset + ppf, dtype=freqs_dtype, device=self.freqs_cos.device)
        time_cos, time_sin = get_1d_rotary_pos_embed(
            self.t_dim, positions, self.theta, use_real=True, repeat_interleave_real=True, freqs_dtype=freqs_dtype
        )
        split_sizes = [self.t_dim, self.h_dim, self.w_dim]
        _, height_cos, width_cos = self.freqs_cos.split(split_sizes, dim=1)
        _, height_sin, width_sin = self.freqs_sin.split(split_sizes, dim=1)

        def grid_table(time_part, height_part, width_part):
            table = torch.cat(
                [
                    time_part.view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
                    height_part[:pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
                    width_part[:ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1),
                ],
                dim=-1,
            )
            return table.reshape(1, ppf * pph * ppw, 1, -1)

        return grid_table(time_cos, height_cos, width_cos), grid_table(time_sin, height_sin, width_sin)


def block_causal_chunk_token_ranges(
    chunk_frames: list[int], tokens_per_frame: int, cache_frames: int
) -> list[tuple[int, int, int]]:
    r"""
    The block-causal attention layout as `(query_start, query_end, key_start)` token ranges, one per chunk: the
    queries of each chunk see the chunk itself and the `cache_frames` latent frames before it, as when streaming with
    a [`CausalWanKVCache`].

    Example:

    ```py
    >>> block_causal_chunk_token_ranges([3, 3, 1], tokens_per_frame=4, cache_frames=2)
    [(0, 12, 0), (12, 24, 4), (24, 28, 16)]
    ```
    """
    ranges, start = [], 0
    for frames in chunk_frames:
        end = start + frames
        ranges.append(
            (start * tokens_per_frame, end * tokens_per_frame, max(0, start - cache_frames) * tokens_per_frame)
        )
        start = end
    return ranges


def block_causal_attention_mask(
    chunk_frames: list[int], tokens_per_frame: int, cache_frames: int, device: torch.device | None = None
) -> torch.Tensor:
    r"""
    Boolean mask `(1, 1, seq_len, seq_len)` under which a full-sequence forward equals streaming with a
    [`CausalWanKVCache`]: the queries of each chunk see the chunk itself and the `cache_frames` latent frames before it.
    The dense form of [`block_causal_chunk_token_ranges`], for attention code that takes masks; the model itself
    attends chunk by chunk and never builds it.

    Args:
        chunk_frames (`list[int]`): latent frames of each chunk, in order.
        tokens_per_frame (`int`): tokens of one latent frame after patchifying.
        cache_frames (`int`): past latent frames each chunk may see.
    """
    total_frames = sum(chunk_frames)
    chunk_ends = torch.tensor(chunk_frames, device=device).cumsum(0)
    chunk_starts = chunk_ends - torch.tensor(chunk_frames, device=device)
    frame_chunk = torch.repeat_interleave(
        torch.arange(len(chunk_frames), device=device), torch.tensor(chunk_frames, device=device)
    )
    frames = torch.arange(total_frames, device=device)
    visible_from = (chunk_starts[frame_chunk] - cache_frames).clamp(min=0)
    visible_to = chunk_ends[frame_chunk]
    frame_mask = (frames[None, :] >= visible_from[:, None]) & (frames[None, :] < visible_to[:, None])
    token_mask = frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
    return token_mask[None, None]


@dataclass
class CausalWanTransformerOutput(BaseOutput):
    r"""
    Output of [`CausalWanTransformer3DModel`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, num_frames, height, width)`):
            The prediction (flow velocity) for the input latents.
        kv_cache (`CausalWanKVCache`, *optional*):
            The cache to pass with the next chunk (streaming mode only).
    """

    sample: torch.Tensor
    kv_cache: CausalWanKVCache | None = None


class CausalWanTransformer3DModel(WanTransformer3DModel):
    r"""
    [`~diffusers.WanTransformer3DModel`] whose self-attention can run causally over chunks of latent frames, as in
    InfVSR. Same config and parameter names as the parent, so every Wan2.1 diffusers checkpoint loads unchanged.

    The forward pass has three modes:

    - `kv_cache=CausalWanKVCache(...)`: streaming. The input is one chunk; its queries attend over the cached keys and
      values of the previous `cache_frames` latent frames plus its own. Returns the prediction and a new cache.
    - `chunk_frames=[...]`: block-causal full sequence (training). One call over many chunks, each chunk's queries
      attending to their visible keys only (no dense mask), numerically equal to streaming those chunks.
    - neither: full attention over the input, like the parent model.

    The temporal RoPE index is absolute (`frame_offset`, or the cache's `next_frame`) and unbounded; height and width
    indices start at 0 in every chunk.

    Streaming works under diffusers' context parallelism (`enable_parallelism(config=ContextParallelConfig(...))`):
    each rank keeps an even share of the cached tokens, so those of `cache_frames` latent frames must split evenly.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_infvsr import CausalWanKVCache, CausalWanTransformer3DModel

    >>> transformer = CausalWanTransformer3DModel(
    ...     num_attention_heads=2, attention_head_dim=8, text_dim=16, ffn_dim=32, num_layers=2
    ... )
    >>> context, timestep = torch.randn(1, 4, 16), torch.tensor([400.0])
    >>> cache = CausalWanKVCache(cache_frames=3)
    >>> for _ in range(4):
    ...     chunk = torch.randn(1, 16, 3, 8, 8)
    ...     out = transformer(chunk, timestep, context, kv_cache=cache)
    ...     velocity, cache = out.sample, out.kv_cache
    >>> cache.num_frames, cache.next_frame
    (3, 12)
    ```
    """

    # The parent's plan without its entry for the model itself, which splits per-token timesteps (Wan 2.2 TI2V; here
    # timesteps are per sample) and requires the output to be tensors (a streaming call also returns the cache).
    _cp_plan = {name: plan for name, plan in WanTransformer3DModel._cp_plan.items() if name != ""}

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
    ) -> None:
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        self.rope = CausalWanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        for layer_index, block in enumerate(self.blocks):
            block.attn1.set_processor(CausalWanAttnProcessor(layer_index))

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        *,
        kv_cache: CausalWanKVCache | None = None,
        frame_offset: int | None = None,
        chunk_frames: list[int] | None = None,
        cache_frames: int = 3,
    ) -> CausalWanTransformerOutput | tuple:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, in_channels, num_frames, height, width)`):
                Latents of one chunk (streaming) or of the whole clip.
            timestep (`torch.Tensor` of shape `(batch_size,)`):
                Diffusion timestep.
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, sequence_len, text_dim)`):
                Cross-attention context (the DAPE visual prompt for InfVSR).
            encoder_hidden_states_image (`torch.Tensor`, *optional*):
                Image embeddings, for configurations with `image_dim` set.
            return_dict (`bool`, defaults to `True`):
                Whether to return a [`CausalWanTransformerOutput`]. Otherwise a tuple whose first element is the sample,
                as for the parent model: `(sample,)`, or `(sample, kv_cache)` in streaming mode.
            attention_kwargs (`dict`, *optional*):
                Only `scale`, the LoRA scale, is used.
            kv_cache (`CausalWanKVCache`, *optional*):
                Streaming mode: the cache returned with the previous chunk (or a fresh one). Not modified.
            frame_offset (`int`, *optional*):
                Absolute temporal index of the first input frame. Defaults to `kv_cache.next_frame`, else 0.
            chunk_frames (`list[int]`, *optional*):
                Block-causal mode: latent frames of each chunk; must sum to `num_frames`.
            cache_frames (`int`, defaults to `3`):
                Block-causal mode: past latent frames each chunk sees (streaming mode takes the cache's own).

        The arguments after `attention_kwargs` are keyword-only, so positional calls written for
        [`~diffusers.WanTransformer3DModel`] keep their meaning.
        """
        self._check_inputs(hidden_states, timestep, kv_cache, frame_offset, chunk_frames, cache_frames)
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_patch_num_frames = num_frames // p_t
        post_patch_height = height // p_h
        post_patch_width = width // p_w
        tokens_per_frame = post_patch_height * post_patch_width

        if frame_offset is None:
            frame_offset = kv_cache.next_frame if kv_cache is not None else 0
        freqs_cos, freqs_sin = self.rope(hidden_states, frame_offset=frame_offset)
        self_attention_inputs = CausalSelfAttentionInputs(freqs_cos, freqs_sin)
        new_cache = None
        if kv_cache is not None:
            grid = (batch_size, post_patch_height, post_patch_width)
            kv_cache.check_compatible(*grid)
            kept_frames = min(kv_cache.cache_frames, kv_cache.num_frames + post_patch_num_frames)
            new_cache = kv_cache.successor(grid, frame_offset + post_patch_num_frames, kept_frames, len(self.blocks))
            self_attention_inputs.past_cache = kv_cache
            self_attention_inputs.new_cache = new_cache
            self_attention_inputs.keep_tokens = kept_frames * tokens_per_frame
        elif chunk_frames is not None:
            self_attention_inputs.chunk_token_ranges = block_causal_chunk_token_ranges(
                chunk_frames, tokens_per_frame, cache_frames
            )

        hidden_states = self.patch_embedding(hidden_states)
        hidden_states = hidden_states.flatten(2).transpose(1, 2).contiguous()

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, self_attention_inputs
                )
            else:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, self_attention_inputs)

        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift = shift.to(hidden_states.device)
        scale = scale.to(hidden_states.device)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(
            batch_size, post_patch_num_frames, post_patch_height, post_patch_width, p_t, p_h, p_w, -1
        )
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)

        if not return_dict:
            return (output,) if new_cache is None else (output, new_cache)
        return CausalWanTransformerOutput(sample=output, kv_cache=new_cache)

    def _check_inputs(self, hidden_states, timestep, kv_cache, frame_offset, chunk_frames, cache_frames):
        if hidden_states.ndim != 5:
            raise ValueError(
                "`hidden_states` must be latents of shape (batch_size, channels, frames, height, width), got a "
                f"tensor of rank {hidden_states.ndim} with shape {tuple(hidden_states.shape)}."
            )
        if hidden_states.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`hidden_states` must have {self.config.in_channels} channels (dim 1), got {hidden_states.shape[1]}."
            )
        p_t, p_h, p_w = self.config.patch_size
        _, _, num_frames, height, width = hidden_states.shape
        if num_frames % p_t or height % p_h or width % p_w or num_frames == 0:
            raise ValueError(
                f"Latent (frames, height, width) = {(num_frames, height, width)} must be non-empty multiples of the "
                f"patch size {tuple(self.config.patch_size)}."
            )
        if timestep.ndim != 1:
            raise ValueError(f"`timestep` must have shape (batch_size,), got {tuple(timestep.shape)}.")
        if kv_cache is not None and chunk_frames is not None:
            raise ValueError("Pass either `kv_cache` (streaming) or `chunk_frames` (block-causal sequence), not both.")
        if frame_offset is not None and frame_offset < 0:
            raise ValueError(f"`frame_offset` must be >= 0, got {frame_offset}.")
        if chunk_frames is not None:
            if any(frames <= 0 for frames in chunk_frames) or sum(chunk_frames) * p_t != num_frames:
                raise ValueError(
                    f"`chunk_frames` {list(chunk_frames)} must be positive and sum to the {num_frames // p_t} latent "
                    "frames of `hidden_states`."
                )
            if cache_frames < 0:
                raise ValueError(f"`cache_frames` must be >= 0, got {cache_frames}.")
