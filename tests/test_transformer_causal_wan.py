import pytest
import torch
from conftest import TINY_TRANSFORMER_CONFIG
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from original_layouts import original_wan_dit_state_dict

from diffusers_infvsr import CausalWanKVCache, CausalWanTransformer3DModel, block_causal_attention_mask
from diffusers_infvsr.models import transformer_causal_wan


CHUNKS = [3, 3, 3, 3, 1]  # five chunks, the last one shorter
TIMESTEP = torch.tensor([400.0])


def inputs(num_frames=sum(CHUNKS), height=4, width=6, batch_size=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch_size, 4, num_frames, height, width, generator=generator)
    context = torch.randn(batch_size, 5, TINY_TRANSFORMER_CONFIG["text_dim"], generator=generator)
    return latents, context


def stream(model, latents, context, chunks, cache, on_step=None):
    outputs, start = [], 0
    for frames in chunks:
        output = model(latents[:, :, start : start + frames], TIMESTEP, context, kv_cache=cache)
        cache = output.kv_cache
        outputs.append(output.sample)
        start += frames
        if on_step is not None:
            on_step(cache, start)
    return torch.cat(outputs, dim=2), cache


@pytest.mark.parametrize("cache_frames", [3, 2, 5])
@torch.no_grad()
def test_streaming_equals_block_causal_full_sequence(tiny_transformer, cache_frames):
    latents, context = inputs()
    streamed, _ = stream(tiny_transformer, latents, context, CHUNKS, CausalWanKVCache(cache_frames))
    masked = tiny_transformer(latents, TIMESTEP, context, chunk_frames=CHUNKS, cache_frames=cache_frames).sample

    assert (streamed - masked).abs().max() <= 1e-5
    # The comparison is sensitive: unrestricted attention over the clip gives a clearly different result.
    full = tiny_transformer(latents, TIMESTEP, context).sample
    assert (streamed - full).abs().max() > 1e-2


@torch.no_grad()
def test_rope_is_relative_and_cache_holds_cache_frames(tiny_transformer):
    latents, context = inputs()
    reference, _ = stream(tiny_transformer, latents, context, CHUNKS, CausalWanKVCache(3))

    tokens_per_frame = (4 // 2) * (6 // 2)

    def check_cache(cache, frames_seen):
        assert cache.num_frames == min(3, frames_seen)
        assert cache.next_frame == 100_000 + frames_seen
        assert len(cache.key_states) == TINY_TRANSFORMER_CONFIG["num_layers"]
        for key, value in zip(cache.key_states, cache.value_states):
            assert key.shape == value.shape == (1, min(3, frames_seen) * tokens_per_frame, 2, 12)

    assert 100_000 > TINY_TRANSFORMER_CONFIG["rope_max_seq_len"] * 1000
    shifted, _ = stream(
        tiny_transformer, latents, context, CHUNKS, CausalWanKVCache(3, start_frame=100_000), on_step=check_cache
    )
    assert (shifted - reference).abs().max() <= 1e-4


@torch.no_grad()
def test_explicit_frame_offset_matches_cache_position(tiny_transformer):
    latents, context = inputs(num_frames=3)
    from_cache = tiny_transformer(latents, TIMESTEP, context, kv_cache=CausalWanKVCache(3, start_frame=7)).sample
    explicit = tiny_transformer(latents, TIMESTEP, context, kv_cache=CausalWanKVCache(3), frame_offset=7)
    assert torch.equal(from_cache, explicit.sample)
    assert explicit.kv_cache.next_frame == 10


@torch.no_grad()
def test_cache_length_zero_equals_stock_model_per_chunk(tiny_transformer):
    stock = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    stock.load_state_dict(tiny_transformer.state_dict(), strict=True)
    latents, context = inputs()

    streamed, cache = stream(tiny_transformer, latents, context, CHUNKS, CausalWanKVCache(cache_frames=0))
    per_chunk = torch.cat([stock(chunk, TIMESTEP, context).sample for chunk in latents.split(CHUNKS, dim=2)], dim=2)
    assert cache.num_frames == 0
    # Float32 round-off only: the temporal RoPE angles differ (absolute offsets) but their differences do not.
    assert (streamed - per_chunk).abs().max() <= 1e-5


@torch.no_grad()
def test_interleaved_streams_are_independent_and_caches_are_not_mutated(tiny_transformer):
    video_a, context_a = inputs(seed=1)
    video_b, context_b = inputs(seed=2)
    alone_a, _ = stream(tiny_transformer, video_a, context_a, CHUNKS, CausalWanKVCache(3))
    alone_b, _ = stream(tiny_transformer, video_b, context_b, CHUNKS, CausalWanKVCache(3))

    cache_a, cache_b, outputs_a, outputs_b = CausalWanKVCache(3), CausalWanKVCache(3), [], []
    for chunk_a, chunk_b in zip(video_a.split(CHUNKS, dim=2), video_b.split(CHUNKS, dim=2)):
        out_a = tiny_transformer(chunk_a, TIMESTEP, context_a, kv_cache=cache_a)
        out_b = tiny_transformer(chunk_b, TIMESTEP, context_b, kv_cache=cache_b)
        outputs_a.append(out_a.sample)
        outputs_b.append(out_b.sample)
        cache_a, cache_b = out_a.kv_cache, out_b.kv_cache
    assert torch.equal(torch.cat(outputs_a, 2), alone_a)
    assert torch.equal(torch.cat(outputs_b, 2), alone_b)

    # Re-running a chunk from an old cache reproduces it: the forward pass did not modify that cache.
    first_cache = tiny_transformer(video_a[:, :, :3], TIMESTEP, context_a, kv_cache=CausalWanKVCache(3)).kv_cache
    again = [tiny_transformer(video_a[:, :, 3:6], TIMESTEP, context_a, kv_cache=first_cache).sample for _ in range(2)]
    assert torch.equal(again[0], again[1])
    assert torch.equal(again[0], alone_a[:, :, 3:6])


def test_block_causal_mask_layout():
    mask = block_causal_attention_mask([3, 3, 1], tokens_per_frame=1, cache_frames=2)[0, 0]
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    tokens = block_causal_attention_mask([3, 3, 1], tokens_per_frame=4, cache_frames=2)[0, 0]
    assert torch.equal(tokens, expected.repeat_interleave(4, 0).repeat_interleave(4, 1))


def test_loads_diffusers_wan_folders_and_round_trips(tmp_path):
    torch.manual_seed(0)
    stock = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    stock.save_pretrained(tmp_path / "stock")

    model, info = CausalWanTransformer3DModel.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    public = lambda config: {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k[0] != "_"}  # noqa: E731
    assert public(model.config) == public(stock.config)
    for name, tensor in stock.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    model.save_pretrained(tmp_path / "causal")
    reloaded = CausalWanTransformer3DModel.from_pretrained(tmp_path / "causal")
    latents, context = inputs(num_frames=3)
    with torch.no_grad():
        expected = model(latents, TIMESTEP, context, kv_cache=CausalWanKVCache(3)).sample
        assert torch.equal(reloaded(latents, TIMESTEP, context, kv_cache=CausalWanKVCache(3)).sample, expected)


@torch.no_grad()
def test_converted_original_checkpoint_loads_strictly():
    converted = convert_wan_transformer_to_diffusers(original_wan_dit_state_dict(TINY_TRANSFORMER_CONFIG))
    model = CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    model.load_state_dict(converted, strict=True)

    # Without a cache or mask the model is the stock Wan transformer.
    stock = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    stock.load_state_dict(converted, strict=True)
    latents, context = inputs(num_frames=5)
    torch.testing.assert_close(
        model(latents, TIMESTEP, context).sample, stock(latents, TIMESTEP, context).sample, rtol=0, atol=1e-5
    )


def test_block_causal_forward_with_gradient_checkpointing(tiny_transformer):
    latents, context = inputs()

    def loss_and_grads():
        tiny_transformer.zero_grad()
        loss = tiny_transformer(latents, TIMESTEP, context, chunk_frames=CHUNKS).sample.square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in tiny_transformer.named_parameters()}

    tiny_transformer.train()
    loss, grads = loss_and_grads()
    tiny_transformer.enable_gradient_checkpointing()
    checkpointed_loss, checkpointed_grads = loss_and_grads()

    assert torch.equal(loss, checkpointed_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert grads["blocks.0.attn1.to_q.weight"].abs().sum() > 0


@torch.no_grad()
def test_attention_goes_through_dispatch_and_set_attention_backend(tiny_transformer, monkeypatch):
    latents, context = inputs(num_frames=6)
    default, _ = stream(tiny_transformer, latents, context, [3, 3], CausalWanKVCache(3))

    backends = []
    dispatch = transformer_causal_wan.dispatch_attention_fn

    def recording_dispatch(*args, backend=None, **kwargs):
        backends.append(backend)
        return dispatch(*args, backend=backend, **kwargs)

    monkeypatch.setattr(transformer_causal_wan, "dispatch_attention_fn", recording_dispatch)
    tiny_transformer.set_attention_backend("_native_math")
    math_backend, _ = stream(tiny_transformer, latents, context, [3, 3], CausalWanKVCache(3))

    # One self-attention call per layer and chunk, each with the selected backend.
    assert [str(b.value if hasattr(b, "value") else b) for b in backends] == ["_native_math"] * 4
    torch.testing.assert_close(math_backend, default, rtol=0, atol=1e-5)


@torch.no_grad()
def test_fullgraph_compile_streams_without_recompiling(tiny_transformer):
    # Dynamo (the "eager" backend keeps the test cheap): no graph break in streaming mode, and once the cache is full
    # and the temporal offset has turned dynamic (chunks 1-3), later chunks of the same shape reuse the graph.
    latents, context = inputs(num_frames=18)
    chunks = [3] * 6
    eager, eager_cache = stream(tiny_transformer, latents, context, chunks, CausalWanKVCache(3))

    torch._dynamo.reset()
    compiled = torch.compile(tiny_transformer, fullgraph=True, backend="eager")
    warm, cache = stream(compiled, latents[:, :, :9], context, chunks[:3], CausalWanKVCache(3))
    with torch.compiler.set_stance("fail_on_recompile"):
        rest, cache = stream(compiled, latents[:, :, 9:], context, chunks[3:], cache)
    torch._dynamo.reset()

    torch.testing.assert_close(torch.cat([warm, rest], dim=2), eager, rtol=0, atol=1e-5)
    assert cache.num_frames == eager_cache.num_frames == 3 and cache.next_frame == 18
    torch.testing.assert_close(cache.key_states[-1], eager_cache.key_states[-1], rtol=0, atol=1e-5)


@torch.no_grad()
def test_compile_repeated_blocks_streams_with_the_cache(tiny_transformer):
    latents, context = inputs(num_frames=9)
    eager, _ = stream(tiny_transformer, latents, context, [3, 3, 3], CausalWanKVCache(3))
    torch._dynamo.reset()
    tiny_transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    compiled, _ = stream(tiny_transformer, latents, context, [3, 3, 3], CausalWanKVCache(3))
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


@torch.no_grad()
def test_parent_call_conventions(tiny_transformer):
    """Positional calls written for WanTransformer3DModel keep their meaning; tuples start with the sample."""
    latents, context = inputs(num_frames=3)
    stock = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    stock.load_state_dict(tiny_transformer.state_dict())
    # (hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict)
    output = tiny_transformer(latents, TIMESTEP, context, None, False)
    assert isinstance(output, tuple) and len(output) == 1
    torch.testing.assert_close(output[0], stock(latents, TIMESTEP, context, None, False)[0], rtol=0, atol=1e-6)

    sample, cache = tiny_transformer(latents, TIMESTEP, context, return_dict=False, kv_cache=CausalWanKVCache(3))
    torch.testing.assert_close(sample, output[0], rtol=0, atol=1e-6)  # an empty cache: full attention over the chunk
    assert isinstance(cache, CausalWanKVCache) and cache.num_frames == 3
    with pytest.raises(TypeError):
        tiny_transformer(latents, TIMESTEP, context, None, True, None, CausalWanKVCache(3))


@torch.no_grad()
def test_bad_inputs_raise_clear_errors(tiny_transformer):
    latents, context = inputs(num_frames=3)
    with pytest.raises(ValueError, match="rank 4"):
        tiny_transformer(latents[0], TIMESTEP, context)
    with pytest.raises(ValueError, match="must have 4 channels"):
        tiny_transformer(torch.randn(1, 3, 3, 4, 6), TIMESTEP, context)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        tiny_transformer(torch.randn(1, 4, 3, 5, 6), TIMESTEP, context)
    with pytest.raises(ValueError, match="sum to the 3 latent frames"):
        tiny_transformer(latents, TIMESTEP, context, chunk_frames=[2, 2])
    with pytest.raises(ValueError, match="not both"):
        tiny_transformer(latents, TIMESTEP, context, chunk_frames=[3], kv_cache=CausalWanKVCache())
    with pytest.raises(ValueError, match="cache_frames"):
        CausalWanKVCache(cache_frames=-1)

    cache = tiny_transformer(latents, TIMESTEP, context, kv_cache=CausalWanKVCache()).kv_cache
    with pytest.raises(ValueError, match=r"filled with chunks of .* \(1, 2, 3\), but this chunk has \(1, 4, 3\)"):
        tiny_transformer(torch.randn(1, 4, 3, 8, 6), TIMESTEP, context, kv_cache=cache)


@pytest.mark.parametrize("chunks, cache_frames", [(CHUNKS, 3), ([3, 3, 1], 2), ([2, 2, 2, 2], 5)])
@torch.no_grad()
def test_block_causal_attention_equals_dense_mask_and_streaming(tiny_transformer, monkeypatch, chunks, cache_frames):
    """
    The chunk-by-chunk attention of the block-causal mode against the dense `(L, L)`-mask attention it replaces and
    against streaming. Measured max |difference| (outputs up to ~2.2): 2.4e-7 .. 4.8e-7 to the dense mask (fp32
    rounding: the masked softmax sums other terms), 0 to streaming (the same slices); the bound is 2e-6.
    """
    latents, context = inputs(num_frames=sum(chunks))
    calls = []
    dispatch = transformer_causal_wan.dispatch_attention_fn

    def recording_dispatch(query, key, value, *args, **kwargs):
        calls.append((query.shape[1], key.shape[1], kwargs.get("attn_mask")))
        return dispatch(query, key, value, *args, **kwargs)

    monkeypatch.setattr(transformer_causal_wan, "dispatch_attention_fn", recording_dispatch)
    block_causal = tiny_transformer(latents, TIMESTEP, context, chunk_frames=chunks, cache_frames=cache_frames).sample
    # No mask at all: one unmasked attention per layer and chunk, each over its own visible keys only.
    tokens = 2 * 3
    expected_calls = [
        (frames * tokens, (frames + min(cache_frames, sum(chunks[:index]))) * tokens, None)
        for index, frames in enumerate(chunks)
    ]
    assert calls == expected_calls * TINY_TRANSFORMER_CONFIG["num_layers"]

    # Reference: the same model attending over the whole sequence (one chunk) under the dense block-causal mask.
    mask = block_causal_attention_mask(chunks, tokens, cache_frames)

    def dense_mask_dispatch(query, key, value, *args, **kwargs):
        return torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
        ).transpose(1, 2)

    monkeypatch.setattr(transformer_causal_wan, "dispatch_attention_fn", dense_mask_dispatch)
    dense = tiny_transformer(latents, TIMESTEP, context, chunk_frames=[sum(chunks)]).sample
    monkeypatch.setattr(transformer_causal_wan, "dispatch_attention_fn", dispatch)
    streamed, _ = stream(tiny_transformer, latents, context, chunks, CausalWanKVCache(cache_frames))

    assert (block_causal - dense).abs().max() <= 2e-6
    assert (block_causal - streamed).abs().max() <= 2e-6
    # Sensitive to the layout: full attention over the clip is clearly different.
    assert (block_causal - tiny_transformer(latents, TIMESTEP, context).sample).abs().max() > 1e-2
