import dataclasses
import math
from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
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

# mmagic's RealBasicVSR REDS configuration (configs/real_basicvsr/realbasicvsr_wogan-c64b20-2x30x8_8xb2-lr1e-4-300k_reds.py
# and the c64b20-1x30x8 GAN config share the degradations), as tabulated in examples/README.md. Written out here on
# purpose, independently of `DegradationConfig`'s defaults.
KERNEL_PROBS = {
    "isotropic": 0.405,
    "anisotropic": 0.225,
    "generalized_isotropic": 0.108,
    "generalized_anisotropic": 0.027,
    "plateau_isotropic": 0.108,
    "plateau_anisotropic": 0.027,
    "sinc": 0.1,
}
REFERENCE = {
    "first": {
        "blur_prob": 1.0, "sigma": (0.2, 3.0), "resize": (0.2, 0.7, 0.1), "scale": (0.15, 1.5),
        "gaussian_sigma": (1, 30), "poisson_scale": (0.05, 3),
    },
    "second": {
        "blur_prob": 0.8, "sigma": (0.2, 1.5), "resize": (0.3, 0.4, 0.3), "scale": (0.3, 1.2),
        "gaussian_sigma": (1, 25), "poisson_scale": (0.05, 2.5),
    },
}  # fmt: skip
CODECS = {"libx264": 1 / 3, "h264": 1 / 3, "mpeg4": 1 / 3}
NUM_DRAWS = 3000


def hq_clip(frames: int = 5, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """(frames, 3, height, width) uint8 frames with image-like content."""
    video = (smooth_video(frames, height, width, seed)[0].transpose(0, 1) + 1) * 127.5
    return video.round().to(torch.uint8)


def static_clip(frames: int = 5, height: int = 64, width: int = 96) -> torch.Tensor:
    return hq_clip(1, height, width).expand(frames, -1, -1, -1).contiguous()


def natural_sequence(frames: int = 9, height: int = 128, width: int = 192) -> np.ndarray:
    """(frames, height, width, 3) floats: a pan over matplotlib's sample photograph (Grace Hopper), 2-3 px/frame."""
    image = np.asarray(PIL.Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    crops = [image[100 + 2 * i : 100 + 2 * i + height, 150 + 3 * i : 150 + 3 * i + width] for i in range(frames)]
    return np.stack(crops).astype(np.float32) / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / np.mean((np.round(a * 255) / 255 - np.round(b * 255) / 255) ** 2))


def within(values, bounds) -> bool:
    return min(values) >= bounds[0] and max(values) <= bounds[1]


def frequency_close(observed: list, expected: dict) -> None:
    """Observed frequencies within 4 binomial standard deviations of the expected probabilities."""
    for value, probability in expected.items():
        frequency = observed.count(value) / len(observed)
        tolerance = 4 * math.sqrt(probability * (1 - probability) / len(observed)) + 1e-9
        assert abs(frequency - probability) <= tolerance, (value, frequency, probability)


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(0)
    return [sample_degradation_params(DegradationConfig(), rng) for _ in range(NUM_DRAWS)]


@pytest.mark.parametrize("order", ["first", "second"])
def test_sampled_orders_follow_the_reference_table(draws, order):
    reference = REFERENCE[order]
    rounds = [getattr(params, order) for params in draws]
    kernels = [r.kernel for r in rounds if r.kernel is not None]
    frequency_close([r.kernel is not None for r in rounds], {True: reference["blur_prob"]})
    frequency_close([k.type for k in kernels], KERNEL_PROBS)
    assert {k.size for k in kernels} == {7, 9, 11, 13, 15, 17, 19, 21}
    assert all(k.weights.shape == (k.size, k.size) for k in kernels)
    gaussians = [k for k in kernels if k.type != "sinc"]
    assert within([s for k in gaussians for s in k.sigma], reference["sigma"])
    isotropic = [k for k in gaussians if k.type.endswith("isotropic") and not k.type.endswith("anisotropic")]
    assert isotropic and all(k.sigma[0] == k.sigma[1] and k.rotation == 0 for k in isotropic)
    assert within([k.rotation for k in gaussians], (-math.pi, math.pi))
    assert within([k.beta for k in gaussians if k.type.startswith("generalized")], (0.5, 4))
    assert within([k.beta for k in gaussians if k.type.startswith("plateau")], (1, 2))
    # Real-ESRGAN's sinc cutoffs: [pi/3, pi] below 13 pixels, [pi/5, pi] from 13 on.
    sincs = [k for k in kernels if k.type == "sinc"]
    assert within([k.cutoff for k in sincs if k.size < 13], (math.pi / 3, math.pi))
    assert within([k.cutoff for k in sincs if k.size >= 13], (math.pi / 5, math.pi))
    assert min(k.cutoff for k in sincs if k.size >= 13) < math.pi / 3

    directions = ["up" if r.resize_factor > 1 else "down" if r.resize_factor < 1 else "keep" for r in rounds]
    frequency_close(directions, dict(zip(("up", "down", "keep"), reference["resize"])))
    assert within([r.resize_factor for r in rounds], reference["scale"])
    frequency_close([r.resize_mode for r in rounds], {"bilinear": 1 / 3, "area": 1 / 3, "bicubic": 1 / 3})

    frequency_close([r.noise_type for r in rounds], {"gaussian": 0.5, "poisson": 0.5})
    assert within([r.noise_level for r in rounds if r.noise_type == "gaussian"], reference["gaussian_sigma"])
    assert within([r.noise_level for r in rounds if r.noise_type == "poisson"], reference["poisson_scale"])
    frequency_close([r.gray_noise for r in rounds], {True: 0.4})
    qualities = [r.jpeg_quality for r in rounds]
    assert within(qualities, (30, 95)) and {30, 95} <= set(qualities) and all(isinstance(q, int) for q in qualities)

    # Video compression in both orders (the second one inside the final shuffle), at an integer bitrate.
    frequency_close([r.video_codec for r in rounds], CODECS)
    bitrates = np.array([r.video_bitrate for r in rounds])
    assert bitrates.dtype.kind == "i" and within(bitrates, (10_000, 100_000))
    assert abs(bitrates.mean() - 55_000) < 4 * 90_000 / math.sqrt(12 * NUM_DRAWS)


def test_sampled_final_stage_follows_the_reference_table(draws):
    frequency_close([params.final_sinc_kernel is not None for params in draws], {True: 0.8})
    sincs = [params.final_sinc_kernel for params in draws if params.final_sinc_kernel is not None]
    assert all(kernel.type == "sinc" for kernel in sincs)
    cutoffs = [kernel.cutoff for kernel in sincs]
    assert within(cutoffs, (math.pi / 3, math.pi)) and min(cutoffs) < math.pi / 3 + 0.01
    frequency_close(
        [params.final_resize_mode for params in draws], {"bilinear": 1 / 3, "area": 1 / 3, "bicubic": 1 / 3}
    )
    frequency_close([params.compress_before_final_resize for params in draws], {True: 0.5})


def test_graph_order_and_relative_resizes(monkeypatch):
    """Blur, resize, noise, JPEG, codec; blur, resize, noise, JPEG; then codec and [resize, sinc] in either order."""
    from diffusers_infvsr.training import degradations

    calls = []

    def recorder(name, function):
        def record(frames, *args, **kwargs):
            out = function(frames, *args, **kwargs)
            calls.append((name, frames.shape[1:3], out.shape[1:3]))
            return out

        return record

    for name in ("_blur", "_resize", "_add_noise", "jpeg_compress", "video_compress"):
        monkeypatch.setattr(degradations, name, recorder(name, getattr(degradations, name)))
    base = sample_degradation_params(DegradationConfig(), np.random.default_rng(1))
    first = dataclasses.replace(base.first, resize_factor=0.5, video_codec="libx264")
    second = dataclasses.replace(base.second, resize_factor=1.2, kernel=base.first.kernel, video_codec="mpeg4")
    for compress_first in (True, False):
        calls.clear()
        params = dataclasses.replace(
            base, first=first, second=second, final_sinc_kernel=base.first.kernel,
            compress_before_final_resize=compress_first,
        )  # fmt: skip
        degrade_video(hq_clip(3, 64, 96), params)
        names = [call[0] for call in calls]
        head = ["_blur", "_resize", "_add_noise", "jpeg_compress", "video_compress"]
        head += ["_blur", "_resize", "_add_noise", "jpeg_compress"]
        tail = ["_resize", "_blur"]
        assert names == head + (["video_compress", *tail] if compress_first else [*tail, "video_compress"])
        # The second resize is relative to its input (32 x 48 -> 1.2x, rounded down to even), not to the output.
        assert calls[1][1:] == ((64, 96), (32, 48)) and calls[6][1:] == ((32, 48), (38, 56))
        assert calls[-1][2] == (16, 24)


def test_degradation_is_reproducible_for_a_seed():
    clip = hq_clip()
    first = degrade(clip, seed=3)
    assert torch.equal(first, degrade(clip, seed=3))
    assert not torch.equal(first, degrade(clip, seed=4))
    # Tiny clips too, where libx264's default rate control is not reproducible.
    small = hq_clip(9, 32, 32)
    assert all(torch.equal(degrade(small, seed=seed), degrade(small, seed=seed)) for seed in range(12))


@pytest.mark.parametrize("size", [(64, 96), (36, 52)])
def test_output_is_exactly_one_quarter(size):
    clip = hq_clip(3, *size)
    for seed in range(6):  # draws with upscaling and downscaling orders, all codecs, odd output sizes
        lq = degrade(clip, seed=seed)
        assert lq.dtype == torch.uint8
        assert lq.shape == (3, 3, size[0] // 4, size[1] // 4)
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade(hq_clip(3, 62, 96))


NOISELESS = {name: {"gaussian_sigma": (0.0, 0.0), "poisson_scale": (0.0, 0.0)} for name in ("first", "second")}


def test_degrade_draws_one_parameter_set_per_clip():
    config = DegradationConfig.from_dict({**NOISELESS, "video_compression_prob": 0.0})
    for seed in range(6):
        lq = degrade(static_clip(), config, seed=seed)
        # Same kernels, resizes and JPEG qualities for every frame: a static clip stays static.
        assert all(torch.equal(frame, lq[0]) for frame in lq), seed


def test_noise_level_is_shared_and_noise_drawn_per_frame():
    flat = {"blur_prob": 0.0, "resize_probs": (0.0, 0.0, 1.0), "gaussian_noise_prob": 1.0, "jpeg_quality": (100, 100)}
    config = DegradationConfig.from_dict(
        {
            "first": {**flat, "gaussian_sigma": (10.0, 30.0), "gray_noise_prob": 0.0},
            "second": {**flat, "gaussian_sigma": (0.0, 0.0)},
            "final_sinc_prob": 0.0,
            "video_compression_prob": 0.0,
        }
    )
    params = sample_degradation_params(config, np.random.default_rng(0))
    params = dataclasses.replace(params, final_resize_mode="area")
    gray = torch.full((6, 3, 64, 64), 128, dtype=torch.uint8)
    lq = degrade_video(gray, params).float()
    # No blur or intermediate resize; the final area resize averages 4 x 4 pixels of i.i.d. noise.
    residual_std = (lq - 128).flatten(1).std(dim=1)
    assert torch.allclose(residual_std, torch.full_like(residual_std, residual_std.mean()), rtol=0.15)
    expected = params.first.noise_level / 4
    assert expected * 0.8 < residual_std.mean() < expected * 1.2
    assert not torch.equal(lq[0], lq[1])


@pytest.mark.parametrize("codec", list(CODECS))
def test_codec_at_reference_bitrates_keeps_reference_quality(codec):
    """
    At stream rate 1 and bitrates 1e4 .. 1e5, the reference's codecs keep a 128 x 192 natural pan at 37-42 dB PSNR
    (libx264 37.6 / 41.8 dB, mpeg4 37.2 dB, measured with PyAV 1 fps); the range asserted is 35-45 dB. Encoding the
    same bitrate at 25 fps would give libx264 18.8 / 27.5 dB.
    """
    clip = natural_sequence()
    values = [psnr(video_compress(clip, codec, bitrate), clip) for bitrate in (10_000, 100_000)]
    assert all(35 <= value <= 45 for value in values), values
    assert values[1] >= values[0]


def test_video_compression_is_one_lossy_reproducible_stream():
    clip = natural_sequence(8, 32, 48)
    for codec in ("libx264", "mpeg4"):
        low = video_compress(clip, codec, bitrate=10_000, rate=25)
        high = video_compress(clip, codec, bitrate=2_000_000, rate=25)
        assert low.shape == clip.shape
        assert np.array_equal(low, video_compress(clip, codec, bitrate=10_000, rate=25))
        assert np.abs(low - clip).mean() > np.abs(high - clip).mean() > 0
    assert video_compress(natural_sequence(3, 18, 26), "libx264", 50_000).shape == (3, 18, 26, 3)


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
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-7)


def test_config_from_dict():
    config = DegradationConfig.from_dict({"second": {"blur_prob": 0.5}, "video_codecs": ["libx264"]})
    assert config.second.blur_prob == 0.5 and config.second.blur_sigma == (0.2, 1.5)
    assert config.video_codecs == ["libx264"] and config.video_codec_probs == (1.0,)
    with pytest.raises(ValueError, match="Unknown"):
        DegradationConfig.from_dict({"blur": 1})
    with pytest.raises(ValueError, match="second"):
        DegradationConfig.from_dict({"second": {"blur": 1}})
