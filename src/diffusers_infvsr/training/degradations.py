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
"""
RealBasicVSR's second-order degradations, which turn a high-quality clip into a realistic low-quality one.

The graph of mmagic's RealBasicVSR REDS configuration:

1. first order: blur, random resize, Gaussian or Poisson noise, JPEG, video compression;
2. second order: blur, random resize, noise, JPEG;
3. then, in random order, video compression and [resize to the output size, sinc filter].

Resizes of the first two orders are relative to the current size. Every random choice is drawn once per clip
([`sample_degradation_params`]), as in DOVE: all frames of a clip get the same kernels, sizes, noise levels, qualities
and codecs; only the noise itself is drawn per frame. Everything is seeded, so a seed reproduces a clip's degradation
exactly. Filtering, resizing and JPEG run through OpenCV, video codecs through PyAV (FFmpeg).
"""

import dataclasses
import io
import math
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
import torch


KERNEL_TYPES = (
    "isotropic",
    "anisotropic",
    "generalized_isotropic",
    "generalized_anisotropic",
    "plateau_isotropic",
    "plateau_anisotropic",
    "sinc",
)
RESIZE_MODES = ("bilinear", "area", "bicubic")
_CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}


@dataclass
class DegradationRound:
    r"""
    Ranges and probabilities of one order of [blur, resize, noise, JPEG]. The defaults are RealBasicVSR's first order;
    [`DegradationConfig`] uses milder ones for the second.

    Args:
        blur_prob: Probability of blurring at all.
        kernel_probs: Probability of each entry of `KERNEL_TYPES` (Gaussian, generalized Gaussian, plateau, each
            isotropic or anisotropic, and sinc).
        blur_sigma: Range of the Gaussian standard deviations (pixels).
        generalized_beta, plateau_beta: Shape exponent ranges of the generalized Gaussian and plateau kernels.
        resize_probs: Probabilities of scaling up, down, or keeping the size.
        resize_range: Range of the resize factor, relative to the size of the order's input.
        gaussian_noise_prob: Probability of Gaussian noise (Poisson noise otherwise).
        gaussian_sigma: Range of the Gaussian noise standard deviation, in 8-bit levels.
        poisson_scale: Range of the Poisson noise scale.
        gray_noise_prob: Probability that the noise is the same in the three channels.
        jpeg_quality: Range of the JPEG quality (integers, both ends included).
    """

    blur_prob: float = 1.0
    kernel_probs: tuple[float, ...] = (0.405, 0.225, 0.108, 0.027, 0.108, 0.027, 0.1)
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    gaussian_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


def _second_order() -> DegradationRound:
    return DegradationRound(
        blur_prob=0.8,
        blur_sigma=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        gaussian_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


@dataclass
class DegradationConfig:
    r"""
    All ranges and probabilities of the degradation model. The defaults are those of mmagic's RealBasicVSR REDS
    configuration (see the table in examples/README.md).

    Args:
        scale: Downscaling factor of the final resize; the output is exactly `(height // scale, width // scale)`.
        first, second: The two [`DegradationRound`]s.
        kernel_sizes: Blur and sinc kernel sizes, drawn uniformly.
        resize_mode_probs: Probabilities of the interpolations `RESIZE_MODES` of every resize.
        final_sinc_prob: Probability of a sinc filter with the final resize.
        final_sinc_cutoff: Range of the final sinc filter's cutoff, radians per pixel.
        video_compression_prob: Probability of each of the two video compressions.
        video_codecs: FFmpeg encoder names to choose from (`h264` is FFmpeg's default H.264 encoder).
        video_codec_probs: Probability of each codec.
        video_bitrate_range: Range of the bitrate, integers, both ends included. Frames are encoded at a stream rate
            of one frame per second, so this is also the budget of one frame in bits.

    Example:

    ```py
    >>> config = DegradationConfig.from_dict({"second": {"blur_prob": 0.5}, "video_codecs": ["libx264"]})
    >>> config.second.blur_prob, config.first.blur_prob
    (0.5, 1.0)
    ```
    """

    scale: int = 4
    first: DegradationRound = field(default_factory=DegradationRound)
    second: DegradationRound = field(default_factory=_second_order)
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    resize_mode_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    final_sinc_prob: float = 0.8
    final_sinc_cutoff: tuple[float, float] = (math.pi / 3, math.pi)
    video_compression_prob: float = 1.0
    video_codecs: tuple[str, ...] = ("libx264", "h264", "mpeg4")
    video_codec_probs: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    video_bitrate_range: tuple[int, int] = (10_000, 100_000)

    def __post_init__(self):
        if len(self.video_codec_probs) != len(self.video_codecs):
            # A codec list given without probabilities: choose uniformly.
            self.video_codec_probs = tuple(1 / len(self.video_codecs) for _ in self.video_codecs)

    @classmethod
    def from_dict(cls, values: dict) -> "DegradationConfig":
        """A config with the given entries (the rounds as nested dicts) replacing the defaults."""
        values = dict(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown degradation settings: {sorted(unknown)}.")
        for name in ("first", "second"):
            if name in values:
                defaults = getattr(cls(), name)
                unknown = set(values[name]) - {f.name for f in dataclasses.fields(DegradationRound)}
                if unknown:
                    raise ValueError(f"Unknown settings of the {name} degradation round: {sorted(unknown)}.")
                values[name] = dataclasses.replace(defaults, **values[name])
        return cls(**values)


@dataclass
class BlurKernel:
    """One drawn blur kernel: its type and parameters (`None` where the type has none) and its weights."""

    type: str
    size: int
    weights: np.ndarray
    sigma: tuple[float, float] | None = None
    rotation: float | None = None
    beta: float | None = None
    cutoff: float | None = None


@dataclass
class RoundParams:
    """The draws of one [`DegradationRound`] for one clip, with the video compression that belongs to its order."""

    kernel: BlurKernel | None
    resize_factor: float
    resize_mode: str
    noise_type: str
    noise_level: float
    gray_noise: bool
    jpeg_quality: int
    video_codec: str | None
    video_bitrate: int


@dataclass
class DegradationParams:
    """Everything drawn for one clip: shared by all of its frames."""

    first: RoundParams
    second: RoundParams
    final_sinc_kernel: BlurKernel | None
    final_resize_mode: str
    compress_before_final_resize: bool
    noise_seed: int


def _uniform(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _choice(rng: np.random.Generator, options, probs):
    probs = np.asarray(probs, dtype=np.float64)
    return options[int(rng.choice(len(options), p=probs / probs.sum()))]


def _kernel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(coords, coords, indexing="ij")


def anisotropic_kernel(
    size: int, sigma_x: float, sigma_y: float, rotation: float, beta: float = 1.0, plateau: bool = False
) -> np.ndarray:
    r"""
    Normalized 2-D kernel over the quadratic form `d = x^T C^-1 x` of a rotated Gaussian covariance
    `C = R diag(sigma_x^2, sigma_y^2) R^T`: `exp(-d^beta / 2)` (Gaussian for `beta = 1`, generalized Gaussian
    otherwise) or, with `plateau=True`, `1 / (1 + d^beta)`.
    """
    rot = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
    inverse = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    rows, cols = _kernel_grid(size)
    points = np.stack([cols, rows], axis=-1)  # (x, y) per pixel
    quadratic = np.einsum("...i,ij,...j->...", points, inverse, points)
    kernel = 1 / (1 + quadratic**beta) if plateau else np.exp(-0.5 * quadratic**beta)
    return (kernel / kernel.sum()).astype(np.float32)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    r"""Normalized circular low-pass (sinc) kernel `cutoff * J1(cutoff * r) / (2 pi r)`, cutoff in radians/pixel."""
    rows, cols = _kernel_grid(size)
    radius = torch.from_numpy(np.sqrt(rows**2 + cols**2))
    safe_radius = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe_radius) / (2 * math.pi * safe_radius)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff**2 / (4 * math.pi)), kernel).numpy()
    return (kernel / kernel.sum()).astype(np.float32)


def _sample_sinc(rng: np.random.Generator, size: int, cutoff_range: tuple[float, float]) -> BlurKernel:
    cutoff = _uniform(rng, cutoff_range)
    return BlurKernel("sinc", size, sinc_kernel(size, cutoff), cutoff=cutoff)


def _sample_blur_kernel(rng: np.random.Generator, settings: DegradationRound, config: DegradationConfig):
    size = int(rng.choice(config.kernel_sizes))
    kind = _choice(rng, KERNEL_TYPES, settings.kernel_probs)
    if kind == "sinc":
        # Real-ESRGAN's cutoff range, which mmagic keeps for the sinc kernels of the two orders.
        return _sample_sinc(rng, size, (math.pi / 3 if size < 13 else math.pi / 5, math.pi))
    sigma_x = _uniform(rng, settings.blur_sigma)
    sigma_y, rotation = sigma_x, 0.0
    if kind.endswith("anisotropic"):
        sigma_y = _uniform(rng, settings.blur_sigma)
        rotation = _uniform(rng, (-math.pi, math.pi))
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _uniform(rng, settings.generalized_beta)
    elif kind.startswith("plateau"):
        beta = _uniform(rng, settings.plateau_beta)
    weights = anisotropic_kernel(size, sigma_x, sigma_y, rotation, beta, plateau=kind.startswith("plateau"))
    return BlurKernel(kind, size, weights, sigma=(sigma_x, sigma_y), rotation=rotation, beta=beta)


def _sample_video_codec(rng: np.random.Generator, config: DegradationConfig) -> tuple[str | None, int]:
    compress = rng.random() < config.video_compression_prob and len(config.video_codecs) > 0
    codec = _choice(rng, config.video_codecs, config.video_codec_probs) if compress else None
    low, high = config.video_bitrate_range
    return codec, int(rng.integers(int(low), int(high) + 1))


def _sample_round(rng: np.random.Generator, settings: DegradationRound, config: DegradationConfig) -> RoundParams:
    kernel = _sample_blur_kernel(rng, settings, config) if rng.random() < settings.blur_prob else None
    direction = _choice(rng, ("up", "down", "keep"), settings.resize_probs)
    low, high = settings.resize_range
    factor = {"up": _uniform(rng, (1.0, high)), "down": _uniform(rng, (low, 1.0)), "keep": 1.0}[direction]
    gaussian = rng.random() < settings.gaussian_noise_prob
    resize_mode = _choice(rng, RESIZE_MODES, config.resize_mode_probs)
    noise_level = _uniform(rng, settings.gaussian_sigma if gaussian else settings.poisson_scale)
    gray_noise = bool(rng.random() < settings.gray_noise_prob)
    jpeg_quality = int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1))
    codec, bitrate = _sample_video_codec(rng, config)
    return RoundParams(
        kernel=kernel,
        resize_factor=factor,
        resize_mode=resize_mode,
        noise_type="gaussian" if gaussian else "poisson",
        noise_level=noise_level,
        gray_noise=gray_noise,
        jpeg_quality=jpeg_quality,
        video_codec=codec,
        video_bitrate=bitrate,
    )


def sample_degradation_params(config: DegradationConfig, rng: np.random.Generator) -> DegradationParams:
    r"""Draw every random choice of the degradation of one clip from `rng`."""
    first = _sample_round(rng, config.first, config)
    second = _sample_round(rng, config.second, config)
    final_sinc = None
    if rng.random() < config.final_sinc_prob:
        final_sinc = _sample_sinc(rng, int(rng.choice(config.kernel_sizes)), config.final_sinc_cutoff)
    return DegradationParams(
        first=first,
        second=second,
        final_sinc_kernel=final_sinc,
        final_resize_mode=_choice(rng, RESIZE_MODES, config.resize_mode_probs),
        compress_before_final_resize=bool(rng.random() < 0.5),
        noise_seed=int(rng.integers(2**62)),
    )


def _blur(frames: np.ndarray, kernel: BlurKernel | None) -> np.ndarray:
    if kernel is None:
        return frames
    # OpenCV's default border (reflect-101), as the reference. Sinc kernels have negative lobes: clip the overshoot.
    return np.stack([np.clip(cv2.filter2D(frame, -1, kernel.weights), 0, 1) for frame in frames])


def _resize(frames: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    if frames.shape[1:3] == size:
        return frames
    interpolation = _CV2_INTERPOLATION[mode]
    return np.stack([np.clip(cv2.resize(frame, size[::-1], interpolation=interpolation), 0, 1) for frame in frames])


def _relative_size(frames: np.ndarray, factor: float) -> tuple[int, int]:
    """`factor` times the current size, rounded down to even numbers (at least 2), as the reference."""
    return tuple(max(2, 2 * int(size * factor // 2)) for size in frames.shape[1:3])


def _add_noise(frames: np.ndarray, params: RoundParams, rng: np.random.Generator) -> np.ndarray:
    """Noise drawn independently for every frame, at the clip's level and type."""
    if params.noise_type == "gaussian":
        shape = (*frames.shape[:3], 1) if params.gray_noise else frames.shape
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(params.noise_level / 255)
    else:
        # Real-ESRGAN's Poisson noise on [0, 1] images, with 256 intensity levels.
        source = frames.mean(axis=-1, keepdims=True) if params.gray_noise else frames
        levels = 256
        noise = (rng.poisson(source * levels).astype(np.float32) / levels - source) * np.float32(params.noise_level)
    return np.clip(frames + noise, 0, 1, dtype=np.float32)


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8)


def jpeg_compress(frames: np.ndarray, quality: int) -> np.ndarray:
    r"""JPEG-encode and decode every frame of `(T, H, W, 3)` RGB floats in [0, 1] at one quality (OpenCV's libjpeg)."""
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    decoded = []
    for frame in _to_uint8(frames):
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a frame.")
        decoded.append(cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(decoded).astype(np.float32) / 255


def video_compress(frames: np.ndarray, codec: str, bitrate: int, rate: int = 1) -> np.ndarray:
    r"""
    Encode `(T, H, W, 3)` RGB frames in [0, 1] as one video stream with FFmpeg's `codec` (through PyAV, in memory,
    yuv420p, single-threaded so the result is reproducible) at `bitrate` bits/s and `rate` frames per second (1, as
    RealBasicVSR: one frame per second of budget), and decode it back. Frames are padded by replication to whole
    16 x 16 macroblocks and cropped back. On frames of fewer than 64 macroblocks, libx264's macroblock-tree rate
    control is turned off: there its output is not reproducible from run to run.

    Example:

    ```py
    >>> frames = np.random.default_rng(0).random((5, 32, 48, 3), dtype=np.float32)
    >>> video_compress(frames, "libx264", bitrate=50_000).shape
    (5, 32, 48, 3)
    ```
    """
    num_frames, height, width = frames.shape[:3]
    padded = np.pad(_to_uint8(frames), ((0, 0), (0, -height % 16), (0, -width % 16), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate, options={"threads": "1"})
        if stream.codec_context.name == "libx264" and padded.shape[1] * padded.shape[2] < 64 * 16 * 16:
            stream.codec_context.options = {**stream.codec_context.options, "x264-params": "mbtree=0"}
        stream.width, stream.height = padded.shape[2], padded.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = int(bitrate)
        stream.thread_count = 1
        for frame in padded:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if len(decoded) != num_frames:
        raise RuntimeError(f"{codec} returned {len(decoded)} frames for {num_frames}.")
    return np.stack(decoded)[:, :height, :width].astype(np.float32) / 255


def _compress(frames: np.ndarray, params: RoundParams) -> np.ndarray:
    return frames if params.video_codec is None else video_compress(frames, params.video_codec, params.video_bitrate)


def _order(frames: np.ndarray, params: RoundParams, rng: np.random.Generator) -> np.ndarray:
    """Blur, resize relative to the current size, noise, JPEG."""
    frames = _blur(frames, params.kernel)
    frames = _resize(frames, _relative_size(frames, params.resize_factor), params.resize_mode)
    return jpeg_compress(_add_noise(frames, params, rng), params.jpeg_quality)


@torch.no_grad()
def degrade_video(frames: torch.Tensor, params: DegradationParams, scale: int = 4) -> torch.Tensor:
    r"""
    Apply one clip's degradation.

    Args:
        frames (`torch.Tensor`): `(T, 3, H, W)` high-quality frames, uint8 or float in [0, 1]; `H` and `W` must be
            multiples of `scale`.
        params ([`DegradationParams`]): From [`sample_degradation_params`].
        scale (`int`): The final downscaling factor.

    Returns:
        `torch.Tensor`: `(T, 3, H // scale, W // scale)` uint8 low-quality frames.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"`frames` must have shape (frames, 3, height, width), got {tuple(frames.shape)}.")
    height, width = frames.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"Frame size {(height, width)} must be a multiple of the scale {scale}.")
    frames = frames.permute(0, 2, 3, 1).cpu()
    frames = frames.numpy().astype(np.float32) / 255 if frames.dtype == torch.uint8 else frames.float().clamp(0, 1)
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    rng = np.random.default_rng(params.noise_seed)

    frames = _compress(_order(frames, params.first, rng), params.first)
    frames = _order(frames, params.second, rng)
    if params.compress_before_final_resize:
        frames = _compress(frames, params.second)
    frames = _blur(
        _resize(frames, (height // scale, width // scale), params.final_resize_mode), params.final_sinc_kernel
    )
    if not params.compress_before_final_resize:
        frames = _compress(frames, params.second)
    return torch.from_numpy(_to_uint8(frames)).permute(0, 3, 1, 2).contiguous()


def degrade(frames: torch.Tensor, config: DegradationConfig | None = None, seed: int = 0) -> torch.Tensor:
    r"""
    Degrade a clip with parameters drawn from `seed`: [`sample_degradation_params`] followed by [`degrade_video`].

    Example:

    ```py
    >>> hq = torch.randint(0, 256, (9, 3, 64, 96), dtype=torch.uint8)
    >>> degrade(hq, seed=0).shape
    torch.Size([9, 3, 16, 24])
    ```
    """
    config = config or DegradationConfig()
    params = sample_degradation_params(config, np.random.default_rng(seed))
    return degrade_video(frames, params, config.scale)
