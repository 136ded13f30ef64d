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
RealBasicVSR-style second-order degradations that turn a high-quality clip into a realistic low-quality one.

A first round of [blur, random resize, Gaussian or Poisson noise, JPEG], a second round of [blur, random resize,
noise], then the second round's JPEG and the final resize to 1/scale with a sinc filter (in random order), then lossy
video compression. Every random choice is drawn once per clip
([`sample_degradation_params`]), so all frames of a clip get the same kernels, noise levels, qualities and codec;
only the noise itself is drawn per frame. Everything is seeded, so a seed reproduces a clip's degradation exactly.
"""

import dataclasses
import io
import math
from dataclasses import dataclass, field

import av
import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F


KERNEL_TYPES = (
    "isotropic",
    "anisotropic",
    "generalized_isotropic",
    "generalized_anisotropic",
    "plateau_isotropic",
    "plateau_anisotropic",
)
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class DegradationRound:
    r"""
    Ranges and probabilities of one round of [blur, resize, noise, JPEG]. The defaults are the first round of
    Real-ESRGAN / RealBasicVSR; [`DegradationConfig`] uses milder ones for the second round.

    Args:
        blur_prob: Probability of blurring at all.
        kernel_probs: Probability of each entry of `KERNEL_TYPES` (Gaussian, generalized Gaussian, plateau;
            isotropic or anisotropic), given that a non-sinc kernel is used.
        sinc_prob: Probability that the blur kernel is a sinc (ringing) filter instead.
        blur_sigma: Range of the Gaussian standard deviations (pixels).
        generalized_beta, plateau_beta: Shape exponent ranges of the generalized Gaussian and plateau kernels.
        resize_probs: Probabilities of scaling up, down, or keeping the size.
        resize_range: Range of the resize factor (relative to the round's input for the first round, to the final size
            for the second).
        gaussian_noise_prob: Probability of Gaussian noise (Poisson noise otherwise).
        gaussian_sigma: Range of the Gaussian noise standard deviation, in 8-bit levels.
        poisson_scale: Range of the Poisson noise scale.
        gray_noise_prob: Probability that the noise is the same in the three channels.
        jpeg_quality: Range of the JPEG quality.
    """

    blur_prob: float = 1.0
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
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


def _second_round() -> DegradationRound:
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
    All ranges and probabilities of the degradation model (defaults: Real-ESRGAN's kernels and noise, RealBasicVSR's
    video compression).

    Args:
        scale: Downscaling factor of the final resize; the output is exactly `(height // scale, width // scale)`.
        first, second: The two [`DegradationRound`]s.
        kernel_size_range: Odd blur and sinc kernel sizes are drawn from this range.
        final_sinc_prob: Probability of a sinc filter with the final resize.
        video_compression_prob: Probability of compressing the clip with a video codec at the end.
        video_codecs: Codecs to choose from (FFmpeg encoder names; `libx264` and `mpeg4` ship with PyAV's wheels).
        video_bitrate_range: Range of the codec bitrate in bits per second (drawn log-uniformly).

    Example:

    ```py
    >>> config = DegradationConfig.from_dict({"second": {"blur_prob": 0.5}, "video_codecs": ["libx264"]})
    >>> config.second.blur_prob, config.first.blur_prob
    (0.5, 1.0)
    ```
    """

    scale: int = 4
    first: DegradationRound = field(default_factory=DegradationRound)
    second: DegradationRound = field(default_factory=_second_round)
    kernel_size_range: tuple[int, int] = (7, 21)
    final_sinc_prob: float = 0.8
    video_compression_prob: float = 1.0
    video_codecs: tuple[str, ...] = ("libx264", "mpeg4")
    video_bitrate_range: tuple[float, float] = (1e4, 1e5)

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
class RoundParams:
    """The draws of one [`DegradationRound`] for one clip."""

    kernel: torch.Tensor | None
    resize_factor: float
    resize_mode: str
    noise_type: str
    noise_level: float
    gray_noise: bool
    jpeg_quality: int


@dataclass
class DegradationParams:
    """Everything drawn for one clip: shared by all of its frames."""

    first: RoundParams
    second: RoundParams
    final_sinc_kernel: torch.Tensor | None
    final_resize_mode: str
    jpeg_before_final_resize: bool
    video_codec: str | None
    video_bitrate: int
    noise_seed: int


def _uniform(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _kernel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    return torch.meshgrid(coords, coords, indexing="ij")


def anisotropic_kernel(
    size: int, sigma_x: float, sigma_y: float, rotation: float, beta: float = 1.0, plateau: bool = False
) -> torch.Tensor:
    r"""
    Normalized 2-D kernel over the quadratic form `d = x^T C^-1 x` of a rotated Gaussian covariance
    `C = R diag(sigma_x^2, sigma_y^2) R^T`: `exp(-d^beta / 2)` (Gaussian for `beta = 1`, generalized Gaussian
    otherwise) or, with `plateau=True`, `1 / (1 + d^beta)`.
    """
    rot = torch.tensor(
        [[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]], dtype=torch.float64
    )
    covariance = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    inverse = torch.linalg.inv(covariance)
    rows, cols = _kernel_grid(size)
    points = torch.stack([cols, rows], dim=-1)  # (x, y) per pixel
    quadratic = torch.einsum("...i,ij,...j->...", points, inverse, points)
    kernel = 1 / (1 + quadratic**beta) if plateau else torch.exp(-0.5 * quadratic**beta)
    return (kernel / kernel.sum()).float()


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    r"""Normalized circular low-pass (sinc) kernel `cutoff * J1(cutoff * r) / (2 pi r)`, cutoff in radians/pixel."""
    rows, cols = _kernel_grid(size)
    radius = torch.sqrt(rows**2 + cols**2)
    safe_radius = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe_radius) / (2 * math.pi * safe_radius)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff**2 / (4 * math.pi)), kernel)
    return (kernel / kernel.sum()).float()


def _sample_kernel_size(rng: np.random.Generator, config: DegradationConfig) -> int:
    low, high = config.kernel_size_range
    return int(rng.choice(np.arange(low + (1 - low % 2), high + 1, 2)))


def _sample_sinc(rng: np.random.Generator, size: int) -> torch.Tensor:
    low = math.pi / 3 if size < 13 else math.pi / 5
    return sinc_kernel(size, _uniform(rng, (low, math.pi)))


def _sample_blur_kernel(rng: np.random.Generator, settings: DegradationRound, config: DegradationConfig):
    size = _sample_kernel_size(rng, config)
    if rng.random() < settings.sinc_prob:
        return _sample_sinc(rng, size)
    probs = np.asarray(settings.kernel_probs, dtype=np.float64)
    kind = KERNEL_TYPES[rng.choice(len(KERNEL_TYPES), p=probs / probs.sum())]
    sigma_x = _uniform(rng, settings.blur_sigma)
    sigma_y, rotation = sigma_x, 0.0
    if kind.endswith("anisotropic"):
        sigma_y = _uniform(rng, settings.blur_sigma)
        rotation = _uniform(rng, (-math.pi, math.pi))
    beta = 1.0
    if kind.startswith("generalized"):
        # Half of the draws below 1 (heavy tails), half above (flat tops), as in Real-ESRGAN.
        beta = _uniform(
            rng, (settings.generalized_beta[0], 1.0) if rng.random() < 0.5 else (1.0, settings.generalized_beta[1])
        )
    elif kind.startswith("plateau"):
        beta = _uniform(rng, settings.plateau_beta)
    return anisotropic_kernel(size, sigma_x, sigma_y, rotation, beta, plateau=kind.startswith("plateau"))


def _sample_round(rng: np.random.Generator, settings: DegradationRound, config: DegradationConfig) -> RoundParams:
    kernel = _sample_blur_kernel(rng, settings, config) if rng.random() < settings.blur_prob else None
    direction = rng.choice(3, p=np.asarray(settings.resize_probs) / sum(settings.resize_probs))
    low, high = settings.resize_range
    factor = (_uniform(rng, (1.0, high)), _uniform(rng, (low, 1.0)), 1.0)[direction]
    gaussian = rng.random() < settings.gaussian_noise_prob
    return RoundParams(
        kernel=kernel,
        resize_factor=factor,
        resize_mode=str(rng.choice(RESIZE_MODES)),
        noise_type="gaussian" if gaussian else "poisson",
        noise_level=_uniform(rng, settings.gaussian_sigma if gaussian else settings.poisson_scale),
        gray_noise=bool(rng.random() < settings.gray_noise_prob),
        jpeg_quality=int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1)),
    )


def sample_degradation_params(config: DegradationConfig, rng: np.random.Generator) -> DegradationParams:
    r"""Draw every random choice of the degradation of one clip from `rng`."""
    first = _sample_round(rng, config.first, config)
    second = _sample_round(rng, config.second, config)
    final_sinc = _sample_sinc(rng, _sample_kernel_size(rng, config)) if rng.random() < config.final_sinc_prob else None
    compress = rng.random() < config.video_compression_prob and len(config.video_codecs) > 0
    log_low, log_high = np.log(config.video_bitrate_range)
    return DegradationParams(
        first=first,
        second=second,
        final_sinc_kernel=final_sinc,
        final_resize_mode=str(rng.choice(RESIZE_MODES)),
        jpeg_before_final_resize=bool(rng.random() < 0.5),
        video_codec=str(rng.choice(config.video_codecs)) if compress else None,
        video_bitrate=int(np.exp(rng.uniform(log_low, log_high))),
        noise_seed=int(rng.integers(2**62)),
    )


def _blur(frames: torch.Tensor, kernel: torch.Tensor | None) -> torch.Tensor:
    if kernel is None:
        return frames
    # Replicate padding: unlike reflection it works whatever the kernel size relative to small frames.
    # Sinc kernels have negative lobes: clamp the overshoot.
    return kornia.filters.filter2d(frames, kernel[None].to(frames), border_type="replicate").clamp(0, 1)


def _resize(frames: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if tuple(frames.shape[-2:]) == size:
        return frames
    align = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(frames, size=size, mode=mode, **align).clamp(0, 1)


def _add_noise(frames: torch.Tensor, params: RoundParams, generator: torch.Generator) -> torch.Tensor:
    """Noise drawn independently for every frame, at the clip's level and type."""
    if params.noise_type == "gaussian":
        shape = (frames.shape[0], 1, *frames.shape[2:]) if params.gray_noise else frames.shape
        noise = torch.randn(shape, generator=generator, dtype=frames.dtype) * (params.noise_level / 255)
    else:
        source = frames.mean(dim=1, keepdim=True) if params.gray_noise else frames
        levels = 255.0
        noise = (torch.poisson(source * levels, generator=generator) / levels - source) * params.noise_level
    return (frames + noise).clamp(0, 1)


def _quantize(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) floats in [0, 1] -> (T, H, W, 3) uint8."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _from_uint8(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def jpeg_compress(frames: torch.Tensor, quality: int) -> torch.Tensor:
    r"""JPEG-encode and decode every frame of `(T, 3, H, W)` floats in [0, 1] at one quality (OpenCV's libjpeg)."""
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    decoded = []
    for frame in _quantize(frames):
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a frame.")
        decoded.append(cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return _from_uint8(np.stack(decoded))


def video_compress(frames: torch.Tensor, codec: str, bitrate: int, fps: int = 25) -> torch.Tensor:
    r"""
    Encode `(T, 3, H, W)` frames in [0, 1] as one video stream with FFmpeg's `codec` (through PyAV, in memory,
    yuv420p, single-threaded so the result is reproducible) at `bitrate` bits/s, and decode it back. Odd sizes are
    padded by replication for the chroma subsampling and cropped back.
    """
    height, width = frames.shape[-2:]
    frames = F.pad(frames, (0, width % 2, 0, height % 2), mode="replicate")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream(codec, rate=fps, options={"threads": "1"})
        stream.width, stream.height = frames.shape[-1], frames.shape[-2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = int(bitrate)
        stream.thread_count = 1
        for frame in _quantize(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if len(decoded) != frames.shape[0]:
        raise RuntimeError(f"{codec} returned {len(decoded)} frames for {frames.shape[0]}.")
    return _from_uint8(np.stack(decoded))[..., :height, :width]


def _blur_resize_noise(frames, params: RoundParams, size, generator) -> torch.Tensor:
    frames = _blur(frames, params.kernel)
    frames = _resize(frames, size, params.resize_mode)
    return _add_noise(frames, params, generator)


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
    frames = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float().clamp(0, 1)
    generator = torch.Generator().manual_seed(params.noise_seed)
    target = (height // scale, width // scale)

    first_size = (round(height * params.first.resize_factor), round(width * params.first.resize_factor))
    frames = jpeg_compress(_blur_resize_noise(frames, params.first, first_size, generator), params.first.jpeg_quality)
    second_size = (round(target[0] * params.second.resize_factor), round(target[1] * params.second.resize_factor))
    frames = _blur_resize_noise(frames, params.second, second_size, generator)

    # The second round's JPEG and the final resize with its sinc filter, in random order (as Real-ESRGAN).
    if params.jpeg_before_final_resize:
        frames = jpeg_compress(frames, params.second.jpeg_quality)
    frames = _blur(_resize(frames, target, params.final_resize_mode), params.final_sinc_kernel)
    if not params.jpeg_before_final_resize:
        frames = jpeg_compress(frames, params.second.jpeg_quality)
    if params.video_codec is not None:
        frames = video_compress(frames, params.video_codec, params.video_bitrate)
    return torch.from_numpy(_quantize(frames)).permute(0, 3, 1, 2)


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
