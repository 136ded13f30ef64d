import pytest
import torch
from conftest import smooth_video

from diffusers_infvsr.vae_stream import WanVAEStream, feather_weights, tile_spans


def normalized_mean(vae, video):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (vae.encode(video).latent_dist.mean - mean) / std


def denormalized(vae, latents):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return latents * std + mean


@torch.no_grad()
def test_streaming_equals_one_shot_encode_and_decode(tiny_vae):
    video = smooth_video(21, 32, 48)
    stream = WanVAEStream(tiny_vae)
    pieces = [stream.encode(piece) for piece in video.split([9, 4, 8], dim=2)]
    assert [p.shape[2] for p in pieces] == [3, 1, 2]
    latents = torch.cat(pieces, dim=2)
    expected = normalized_mean(tiny_vae, video)
    # Same operations in the same order as diffusers' one-shot `encode`: equal up to float32 round-off.
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-6)

    frames = torch.cat([stream.decode(piece) for piece in latents.split([2, 1, 3], dim=2)], dim=2)
    assert frames.shape == video.shape
    torch.testing.assert_close(frames, tiny_vae.decode(denormalized(tiny_vae, latents)).sample, rtol=0, atol=1e-5)

    # The causal history matters: restarting the stream between pieces gives a different result.
    stream.reset()
    first = stream.decode(latents[:, :, :3])
    stream.reset()
    restarted = stream.decode(latents[:, :, 3:])
    assert (torch.cat([first, restarted], dim=2)[:, :, : frames.shape[2] - 3] - frames[:, :, :-3]).abs().max() > 1e-2


@torch.no_grad()
def test_streams_are_independent(tiny_vae):
    video_a, video_b = smooth_video(9, 16, 16, seed=1), smooth_video(9, 16, 16, seed=2)
    alone = WanVAEStream(tiny_vae).encode(video_a)
    stream_a, stream_b = WanVAEStream(tiny_vae), WanVAEStream(tiny_vae)
    stream_a.encode(video_a[:, :, :5])
    stream_b.encode(video_b[:, :, :5])
    interleaved = stream_a.encode(video_a[:, :, 5:])
    torch.testing.assert_close(interleaved, alone[:, :, 2:], rtol=0, atol=1e-6)


@torch.no_grad()
def test_tiled_streaming_is_close_to_untiled(tiny_vae):
    video = smooth_video(13, 128, 128)  # 16 x 16 latents: 2 x 2 tiles of 12 latents, stride 6
    untiled, tiled = WanVAEStream(tiny_vae), WanVAEStream(tiny_vae, tile_latent_size=12, tile_latent_stride=6)
    latents = torch.cat([untiled.encode(video[:, :, :5]), untiled.encode(video[:, :, 5:])], dim=2)
    tiled_latents = torch.cat([tiled.encode(video[:, :, :5]), tiled.encode(video[:, :, 5:])], dim=2)
    assert len(tiled._encoder_caches) == 4

    # The Wan VAE's mid-block attention sees the whole frame, so tiles cannot be exact. Stated tolerance: mean
    # absolute difference below 0.02 (latents have mean magnitude ~0.35; pixels live in [-1, 1]).
    assert (tiled_latents - latents).abs().mean() < 0.02
    frames = untiled.decode(latents)
    tiled_frames = torch.cat([tiled.decode(latents[:, :, :2]), tiled.decode(latents[:, :, 2:])], dim=2)
    assert tiled_frames.shape == frames.shape == video.shape
    assert (tiled_frames - frames).abs().mean() < 0.02

    # Per-tile caches make tiled streaming equal to tiled processing of the whole clip at once.
    one_shot = WanVAEStream(tiny_vae, tile_latent_size=12, tile_latent_stride=6)
    torch.testing.assert_close(one_shot.encode(video), tiled_latents, rtol=0, atol=1e-6)
    torch.testing.assert_close(one_shot.decode(latents), tiled_frames, rtol=0, atol=1e-6)


@torch.no_grad()
def test_offloading_idle_tile_caches_keeps_results(tiny_vae):
    video = smooth_video(5, 128, 128)
    kept, offloaded = (
        WanVAEStream(tiny_vae, tile_latent_size=12, tile_latent_stride=6, offload_idle_tiles=flag)
        for flag in (False, True)
    )
    assert torch.equal(kept.encode(video), offloaded.encode(video))
    for cache in offloaded._encoder_caches.values():
        assert all(entry.device.type == "cpu" for entry in cache if isinstance(entry, torch.Tensor))


def test_tile_blending_reproduces_pointwise_operations_exactly(tiny_vae):
    # With an operation that has no spatial context, tiling and feathered blending must be lossless.
    stream = WanVAEStream(tiny_vae, tile_latent_size=5, tile_latent_stride=3)
    inputs = torch.randn(1, 2, 3, 13 * 8, 11 * 8)

    def pool_tile(tile, cache):
        return torch.nn.functional.avg_pool3d(tile, (1, 8, 8)) * 3 + 1

    blended = stream._run_tiled(inputs, {}, 0, 8, 1, (1, 2, 3, 13, 11), pool_tile)
    torch.testing.assert_close(blended, pool_tile(inputs, None), rtol=0, atol=1e-6)

    upsampled = stream._run_tiled(
        pool_tile(inputs, None),
        {},
        0,
        1,
        8,
        inputs.shape,
        lambda t, c: t.repeat_interleave(8, -1).repeat_interleave(8, -2),
    )
    torch.testing.assert_close(upsampled, pool_tile(inputs, None).repeat_interleave(8, -1).repeat_interleave(8, -2))


def test_tile_spans_and_feather_weights():
    assert tile_spans(10, None, 4) == [(0, 10)]
    assert tile_spans(10, 12, 4) == [(0, 10)]
    assert tile_spans(300, 128, 110) == [(0, 128), (110, 238), (220, 300)]
    assert tile_spans(238, 128, 110) == [(0, 128), (110, 238)]
    weights = feather_weights((110, 238), 300, ramp_width=18)
    assert weights[0] == pytest.approx(1 / 18) and weights[17] == 1 and weights[-1] == pytest.approx(1 / 18)
    assert torch.all(weights[18:-18] == 1)
    assert torch.all(feather_weights((0, 128), 128, ramp_width=18) == 1)


@torch.no_grad()
def test_bad_inputs_raise_clear_errors(tiny_vae):
    stream = WanVAEStream(tiny_vae)
    with pytest.raises(ValueError, match="rank 4"):
        stream.encode(torch.zeros(3, 9, 16, 16))
    with pytest.raises(ValueError, match="must have 3 channels"):
        stream.encode(torch.zeros(1, 4, 9, 16, 16))
    with pytest.raises(ValueError, match=r"first chunk of a stream must have 1 \+ 4k frames .* got 8"):
        stream.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        stream.encode(torch.zeros(1, 3, 9, 12, 16))
    stream.encode(torch.zeros(1, 3, 9, 16, 16))
    with pytest.raises(ValueError, match=r"next chunk of a stream must have 4k frames .* got 5"):
        stream.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"built for frames of \(height, width\) = \(16, 16\), but this chunk has"):
        stream.encode(torch.zeros(1, 3, 4, 32, 16))
    with pytest.raises(ValueError, match="must have 4 channels"):
        stream.decode(torch.zeros(1, 16, 1, 2, 2))
    stream.decode(torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(ValueError, match=r"decoder caches were built for frames of \(height, width\) = \(2, 2\)"):
        stream.decode(torch.zeros(1, 4, 1, 4, 2))
    with pytest.raises(ValueError, match="tile_latent_stride"):
        WanVAEStream(tiny_vae, tile_latent_size=8, tile_latent_stride=9)
