import dataclasses

import numpy as np
import pytest
import torch
from conftest import smooth_video

from diffusers_infvsr.training import (
    DegradationConfig,
    degrade,
    degrade_video,
    sample_degradation_params,
    video_compress,
)
from diffusers_infvsr.training.degradations import anisotropic_kernel, sinc_kernel


pytestmark = pytest.mark.usefixtures("single_thread")


def hq_clip(frames: int = 5, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """(frames, 3, height, width) uint8 frames with image-like content."""
    video = (smooth_video(frames, height, width, seed)[0].transpose(0, 1) + 1) * 127.5
    return video.round().to(torch.uint8)


def static_clip(frames: int = 5, height: int = 64, width: int = 96) -> torch.Tensor:
    return hq_clip(1, height, width).expand(frames, -1, -1, -1).contiguous()


def test_degradation_is_reproducible_for_a_seed():
    clip = hq_clip()
    first = degrade(clip, seed=3)
    assert torch.equal(first, degrade(clip, seed=3))
    assert not torch.equal(first, degrade(clip, seed=4))


@pytest.mark.parametrize("size", [(64, 96), (36, 52)])
def test_output_is_exactly_one_quarter(size):
    clip = hq_clip(3, *size)
    for seed in range(6):  # draws with upscaling and downscaling rounds, both codecs, odd output sizes
        lq = degrade(clip, seed=seed)
        assert lq.dtype == torch.uint8
        assert lq.shape == (3, 3, size[0] // 4, size[1] // 4)
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade(hq_clip(3, 62, 96))


def test_blur_resize_and_jpeg_are_shared_by_all_frames():
    config = DegradationConfig(video_compression_prob=0.0)
    for seed in range(4):
        params = sample_degradation_params(config, np.random.default_rng(seed))
        noiseless = dataclasses.replace(
            params,
            first=dataclasses.replace(params.first, noise_level=0.0),
            second=dataclasses.replace(params.second, noise_level=0.0),
        )
        lq = degrade_video(static_clip(), noiseless)
        # Same kernels, resizes and JPEG qualities for every frame: a static clip stays static.
        assert all(torch.equal(frame, lq[0]) for frame in lq)


def test_noise_level_is_shared_and_noise_drawn_per_frame():
    config = DegradationConfig(
        first=dataclasses.replace(
            DegradationConfig().first,
            blur_prob=0.0,
            resize_probs=(0.0, 0.0, 1.0),
            gaussian_noise_prob=1.0,
            gaussian_sigma=(10.0, 30.0),
            gray_noise_prob=0.0,
            jpeg_quality=(100, 100),
        ),
        second=dataclasses.replace(
            DegradationConfig().second,
            blur_prob=0.0,
            gaussian_noise_prob=1.0,
            gaussian_sigma=(0.0, 0.0),
            jpeg_quality=(100, 100),
        ),
        final_sinc_prob=0.0,
        video_compression_prob=0.0,
    )
    params = sample_degradation_params(config, np.random.default_rng(0))
    params = dataclasses.replace(params, final_resize_mode="area", jpeg_before_final_resize=True)
    params = dataclasses.replace(params, second=dataclasses.replace(params.second, resize_factor=4.0))
    gray = torch.full((6, 3, 64, 64), 128, dtype=torch.uint8)
    lq = degrade_video(gray, params).float()
    # No blur; the second round resizes back to the input size, the final area resize averages 4 x 4 pixels.
    residual_std = (lq - 128).flatten(1).std(dim=1)
    assert torch.allclose(residual_std, torch.full_like(residual_std, residual_std.mean()), rtol=0.15)
    assert residual_std.mean() > 10 / 4 * 0.8
    assert not torch.equal(lq[0], lq[1])


def test_video_compression_is_one_lossy_reproducible_stream():
    clip = hq_clip(8, 32, 48).float() / 255
    for codec in ("libx264", "mpeg4"):
        low = video_compress(clip, codec, bitrate=10_000)
        high = video_compress(clip, codec, bitrate=2_000_000)
        assert low.shape == clip.shape
        assert torch.equal(low, video_compress(clip, codec, bitrate=10_000))
        assert (low - clip).abs().mean() > (high - clip).abs().mean() > 0
    assert video_compress(hq_clip(3, 18, 26).float() / 255, "libx264", 50_000).shape == (3, 3, 18, 26)


@pytest.mark.parametrize(
    "kernel",
    [
        anisotropic_kernel(21, 3.0, 1.0, 0.7),
        anisotropic_kernel(9, 1.0, 2.5, -1.2, beta=3.0),
        anisotropic_kernel(11, 2.0, 2.0, 0.0, beta=1.5, plateau=True),
        sinc_kernel(13, 1.5),
    ],
)
def test_kernels_are_normalized_and_point_symmetric(kernel):
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(kernel, kernel.flip(0, 1))


def test_config_from_dict():
    config = DegradationConfig.from_dict({"second": {"blur_prob": 0.5}, "video_codecs": ["libx264"]})
    assert config.second.blur_prob == 0.5 and config.second.blur_sigma == (0.2, 1.5)
    assert config.video_codecs == ["libx264"]
    with pytest.raises(ValueError, match="Unknown"):
        DegradationConfig.from_dict({"blur": 1})
    with pytest.raises(ValueError, match="second"):
        DegradationConfig.from_dict({"second": {"blur": 1}})
