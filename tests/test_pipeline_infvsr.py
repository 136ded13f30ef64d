import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRANSFORMER_CONFIG, lr_video, make_tiny_pipeline
from diffusers import WanTransformer3DModel

from diffusers_infvsr import InfVSRPipeline, InfVSRPipelineOutput, StreamMarker


def test_end_to_end_shapes_range_determinism_and_stream(tiny_pipeline):
    video = lr_video(30)
    output = tiny_pipeline(video=video, output_type="np")
    assert isinstance(output, InfVSRPipelineOutput)
    frames = output.frames
    assert frames.shape == (1, 30, 64, 64, 3)
    assert frames.dtype == np.float32 and frames.min() >= 0 and frames.max() <= 1
    assert frames.std() > 0.01

    again = tiny_pipeline(video=video, output_type="np").frames
    assert np.array_equal(frames, again)

    def generator():  # unknown length
        yield from video

    streamed = np.stack(list(tiny_pipeline.stream(generator(), output_type="np")))
    assert np.array_equal(streamed, frames[0])


def test_chunks_cache_offsets_and_timestep(tiny_pipeline):
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].shape[2], kwargs["kv_cache"].next_frame, args[1].tolist()))

    tiny_pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    tiny_pipeline(video=lr_video(30), output_type="np")
    # 30 frames = 9 + 12 + 9 (padded to 12): three chunks of 3 latent frames at absolute offsets 0, 3, 6; t = 400.
    assert calls == [(3, 0, [400.0]), (3, 3, [400.0]), (3, 6, [400.0])]


@pytest.mark.parametrize("num_frames", [1, 2, 13])
def test_short_videos(tiny_pipeline, num_frames):
    frames = tiny_pipeline(video=lr_video(num_frames), output_type="pt").frames
    assert frames.shape == (1, num_frames, 3, 64, 64)


def test_odd_sizes_come_back_at_exact_scale(tiny_pipeline):
    frames = tiny_pipeline(video=lr_video(5, 17, 23), output_type="np").frames
    assert frames.shape == (1, 5, 68, 92, 3)
    frames = tiny_pipeline(video=lr_video(2, 17, 23), upscale_factor=3, output_type="np").frames
    assert frames.shape == (1, 2, 51, 69, 3)
    frames = tiny_pipeline(video=lr_video(1, 1, 1), upscale_factor=2, output_type="np").frames
    assert frames.shape == (1, 1, 2, 2, 3)


@torch.no_grad()
def test_one_chunk_matches_an_independent_computation(tiny_pipeline):
    """The release's recipe written out with stock diffusers parts: tolerance 1e-5 (float32)."""
    pipe = tiny_pipeline
    video = lr_video(7, 13, 10)
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255
    padded = torch.cat([frames, frames[-1:].expand(2, -1, -1, -1)])  # 7 -> 9 frames (1 + 4k)
    upscaled = F.interpolate(padded * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False, antialias=True)
    upscaled = F.pad(upscaled, (0, 48 - 40, 0, 64 - 52), mode="replicate")  # 52 x 40 -> 64 x 48
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents = (vae.encode(upscaled.transpose(0, 1)[None]).latent_dist.mean - mean) / std

    stock = WanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    stock.load_state_dict(pipe.transformer.state_dict())
    context = pipe.image_encoder.encode_reference(frames[:1])
    velocity = stock(latents, torch.tensor([400.0]), context).sample  # release: bf16(399) == 400
    restored = latents - 0.4008152 * velocity  # sigma of t = 400 on the shift-5 schedule
    expected = vae.decode(restored * std + mean).sample.clamp(-1, 1)[0, :, :7, :52, :40]
    expected = (expected.permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1)

    output = pipe(video=video, output_type="pt").frames[0].permute(0, 2, 3, 1)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)


def test_scene_cut_restarts_everything(tiny_pipeline):
    first, second = lr_video(14, seed=1), lr_video(17, seed=2)
    joined = tiny_pipeline(video=np.concatenate([first, second]), scene_starts=[14], output_type="np").frames[0]
    alone = tiny_pipeline(video=second, output_type="np").frames[0]
    assert np.array_equal(joined[14:], alone)
    # Without the marker the second part continues the first stream and comes out differently.
    continued = tiny_pipeline(video=np.concatenate([first, second]), output_type="np").frames[0]
    assert np.abs(continued[14:] - alone).max() > 1e-3


def test_reference_refresh_changes_only_later_chunks(tiny_pipeline):
    video = lr_video(33, seed=3)
    video[21:] = lr_video(12, seed=4)  # new content from the third chunk on
    plain = tiny_pipeline(video=video, output_type="np").frames[0]
    refreshed = tiny_pipeline(video=video, reference_refreshes=[21], output_type="np").frames[0]
    assert np.array_equal(plain[:21], refreshed[:21])
    assert np.abs(plain[21:] - refreshed[21:]).max() > 1e-4

    markers = list(video[:21]) + [StreamMarker.REFRESH_REFERENCE] + list(video[21:])
    assert np.array_equal(np.stack(list(tiny_pipeline.stream(markers))), refreshed)


def test_input_formats_and_output_types_agree(tiny_pipeline):
    video = lr_video(6, 12, 12)
    reference = tiny_pipeline(video=video, output_type="np").frames
    as_tensor = torch.from_numpy(video).permute(0, 3, 1, 2)
    inputs = [
        [PIL.Image.fromarray(frame) for frame in video],
        video.astype(np.float32) / 255,
        as_tensor,
        as_tensor.float() / 255,
        as_tensor.permute(1, 0, 2, 3)[None],
    ]
    for video_input in inputs:
        np.testing.assert_allclose(tiny_pipeline(video=video_input, output_type="np").frames, reference, atol=1e-6)

    pt = tiny_pipeline(video=video, output_type="pt").frames
    torch.testing.assert_close(pt, torch.from_numpy(reference).permute(0, 1, 4, 2, 3))
    pil = tiny_pipeline(video=video, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 6 and pil[0][0].size == (48, 48)
    np.testing.assert_allclose(np.asarray(pil[0][3]) / 255, reference[0, 3], atol=0.5 / 255 + 1e-6)
    latents = tiny_pipeline(video=video, output_type="latent").frames
    assert latents.shape == (1, 4, 3, 6, 6)  # 6 frames padded to 9
    assert tiny_pipeline(video=video, output_type="np", return_dict=False)[0].shape == reference.shape


@pytest.mark.parametrize(
    "video, kwargs, message",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), {}, "empty"),
        ([], {}, "empty"),
        (np.zeros((3, 8, 8, 4), np.uint8), {}, r"\(height, width, 3\)"),
        (torch.zeros(3, 1, 8, 8), {}, "3 \\(RGB\\) channels"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], {}, "same size"),
        (np.full((3, 8, 8, 3), np.nan, np.float32), {}, "NaN"),
        (np.full((3, 8, 8, 3), 2.0, np.float32), {}, r"in \[0, 1\]"),
        (np.zeros((3, 8, 8, 3), np.uint8), {"upscale_factor": 2.5}, "integer >= 1"),
        (np.zeros((3, 8, 8, 3), np.uint8), {"upscale_factor": 0}, "integer >= 1"),
        (np.zeros((3, 8, 8, 3), np.uint8), {"output_type": "mp4"}, "output_type"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_pipeline, video, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(video=video, **kwargs)


def test_save_load_round_trip_and_model_index(tiny_pipeline, tmp_path):
    expected = tiny_pipeline(video=lr_video(5), output_type="np").frames
    tiny_pipeline.save_pretrained(tmp_path)

    loaded = InfVSRPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name, component in tiny_pipeline.components.items():
        assert type(loaded.components[name]) is type(component)
        if isinstance(component, torch.nn.Module):
            reloaded = loaded.components[name].state_dict()
            assert all(torch.equal(reloaded[key], value) for key, value in component.state_dict().items()), name
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(tiny_pipeline.scheduler.config)
    # Identical weights; the loaded tensors' memory layout can take other CPU kernel paths (float32 round-off).
    np.testing.assert_allclose(loaded(video=lr_video(5), output_type="np").frames, expected, rtol=0, atol=1e-5)


def test_bfloat16_weights_run_close_to_float32(tiny_pipeline_dir):
    video = lr_video(9)
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = InfVSRPipeline.from_pretrained(tiny_pipeline_dir, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == dtype
        outputs[dtype] = pipe(video=video, output_type="np").frames
    # bf16 keeps ~3 significant digits; on pixels in [0, 1] the tiny random model stays within a few percent.
    assert np.abs(outputs[torch.bfloat16] - outputs[torch.float32]).mean() < 0.01
    assert np.abs(outputs[torch.bfloat16] - outputs[torch.float32]).max() < 0.1


@pytest.mark.parametrize("tiled", [False, True])
def test_stream_resumes_from_a_saved_state(tiny_pipeline, tmp_path, tiled):
    # Chunks 0-8 and 9-20; a refresh marker inside the second chunk is still pending at frame 21; a cut at 33.
    video = lr_video(40, seed=3)

    def items(start=0):
        for index in range(start, len(video)):
            if index == 33:
                yield StreamMarker.NEW_SCENE
            if index == 15:
                yield StreamMarker.REFRESH_REFERENCE
            yield video[index]

    def save_at_frame_21(pipe, state):
        if state.frames_done == 21:
            torch.save(state.state_dict(), tmp_path / "state.pt")

    if tiled:  # 64x64 output frames in 5-latent tiles with stride 3: 2x2 tiles, each with its own caches
        tiny_pipeline.vae_tile_threshold, tiny_pipeline.vae_tile_latent_size = 32, 5
        tiny_pipeline.vae_tile_latent_stride = 3
    uninterrupted = np.stack(list(tiny_pipeline.stream(items(), callback_on_chunk_end=save_at_frame_21)))

    resumed_pipe = make_tiny_pipeline()
    resumed_pipe.vae_tile_threshold = tiny_pipeline.vae_tile_threshold
    resumed_pipe.vae_tile_latent_size = tiny_pipeline.vae_tile_latent_size
    resumed_pipe.vae_tile_latent_stride = tiny_pipeline.vae_tile_latent_stride
    state = resumed_pipe.load_stream_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert state.frames_done == 21 and state.refresh_pending and state.scene.kv_cache.next_frame == 6
    resumed = np.stack(list(resumed_pipe.stream(items(21), state=state)))
    np.testing.assert_array_equal(resumed, uninterrupted[21:])
    # The saved caches matter: continuing without them gives other frames.
    assert np.abs(np.stack(list(resumed_pipe.stream(items(21)))) - uninterrupted[21:]).max() > 1e-3
